"""Slide-only inference: patient risks and attention heatmaps."""
