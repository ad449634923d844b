"""The teachsim error tree.

Every error a user can cause derives from :class:`TeachsimError`; the CLI turns those
into one line on stderr and exit code 2. Anything else is a bug or an episode failure.
"""

from __future__ import annotations


class TeachsimError(Exception):
    """Root of every error teachsim raises on purpose."""


class ConfigError(TeachsimError, ValueError):
    """A config value or argument is missing, unknown or out of range.

    The message always starts with the dotted path of the field (``"task.dim: ..."``).

    Args:
        field: dotted path of the offending key.
        detail: what is wrong: what was expected and what came. Given alone
            (``ConfigError("gamma must be below width")``, as a plugin's ``check`` may
            raise it), it is the detail and the field is left to the caller to name
            (``field`` is then ``""``; the config loader fills in the table).
    """

    def __init__(self, field: str, detail: str | None = None):
        if detail is None:
            field, detail = "", field
        self.field, self.detail = field, detail
        super().__init__(f"{field}: {detail}" if field else detail)

    @classmethod
    def expected(cls, field: str, what: str, got: object) -> "ConfigError":
        """The usual shape: ``field: expected WHAT, got GOT``."""
        return cls(field, f"expected {what}, got {_show(got)}")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class PluginError(TeachsimError):
    """A plugin file or module could not be loaded or registers something invalid."""


class ProtocolError(TeachsimError):
    """A protocol broke the message rules (an illegal kind, sender or payload)."""


class BudgetError(TeachsimError):
    """A message could not be delivered within the final budget."""


class DivergedError(TeachsimError, ArithmeticError):
    """A student's training diverged: its weights are no longer finite numbers. Its
    predictions would be arbitrary (argmax of NaN), so the episode fails instead of
    being scored."""


class ClusterLost(TeachsimError):
    """The Ray cluster a run was using went away mid-run (its last node's raylet stopped:
    killed, out of memory, a lost machine). Finished episodes are kept; ``--resume`` goes on."""


class EpisodeTimeout(TeachsimError):
    """An episode ran past its time limit (``time_limit`` in the config, ``--time-limit``):
    a protocol turn that never returns, or a ``learn()`` of a huge number of steps."""


class RunError(TeachsimError):
    """A run directory is missing, corrupt, or holds a different experiment."""
