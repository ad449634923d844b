"""``python -m teachsim``: the command line (:mod:`teachsim.cli`)."""

from .cli import entry

entry()
