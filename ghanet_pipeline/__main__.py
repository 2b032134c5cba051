import sys

from ghanet_pipeline.cli import main

sys.exit(main())
