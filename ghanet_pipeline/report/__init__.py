"""The cohort report: readers of each stage's outputs and the HTML page."""
