"""Worked examples: bring your own model and data set (run from the repository root)."""
