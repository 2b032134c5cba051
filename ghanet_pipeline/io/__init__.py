"""Inputs and outputs shared by every stage: the sample sheet, the output layout, Zarr stores with integrity records, the manifest, the run folder's claim, text made safe for HTML/CSV."""
