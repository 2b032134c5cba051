"""The model names, importable without torch (the Snakefile reads them at parse time)."""

MODEL_NAMES = ("ghanet", "ghanet_norecon", "abmil", "snn")
SLIDE_MODELS = ("ghanet", "ghanet_norecon", "abmil")  # read patch features: need slides
GHANET_MODELS = ("ghanet", "ghanet_norecon")
