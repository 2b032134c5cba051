"""Patch encoders (a factory per family, presets, foundation models), feature extraction into Zarr stores, import from CLAM/TRIDENT .h5, export to CLAM."""
