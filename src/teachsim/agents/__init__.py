"""Agents: the teacher, the student, its models and its learning methods."""
