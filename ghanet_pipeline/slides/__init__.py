"""Whole-slide images: opening, mpp and levels, region and tile readers, tissue segmentation, the patch grid, patch quality, QC pictures, synthetic slides."""
