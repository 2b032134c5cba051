"""Training: patient bags, the training loop, checkpoints, fold results and model summaries."""
