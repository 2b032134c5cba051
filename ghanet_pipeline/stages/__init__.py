"""One thin module per ``ghanet`` subcommand: its arguments, its settings, the call into the
library and the exit code. The work itself lives in the concern's package (slides, features,
genomics, training, inference, report, demo); ``ghanet_pipeline.cli`` registers these modules."""
