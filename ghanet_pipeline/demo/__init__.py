"""The synthetic demo cohort: plan, slides with ground truth, genomic table, splits."""
