"""Worlds: a data distribution, a broad test distribution and the teacher's mechanism."""
