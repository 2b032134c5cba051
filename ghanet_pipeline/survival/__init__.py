"""Survival statistics shared by training, inference and the report: risk, c-index, labels, Kaplan-Meier."""
