"""Genomic tables: parsing and cleaning, gene-family / pathway groups, survival bins, folds, scalers and reconstruction targets."""
