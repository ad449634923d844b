"""Analyses of stored runs (multi-order interactions of a saved student's input variables)."""
