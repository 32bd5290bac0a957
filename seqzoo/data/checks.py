"""Argument checks shared by the data generators and the tasks that call them.

A generator's check takes each argument as an :class:`Arg`, a value with the name to call it
by in errors, so one check names the generator's own argument (``seq_len=63``) when the
generator is called directly, and the config key (``task.test_seq_len=63``) when a task checks
its config before generating anything (``seqzoo.tasks.check_task``).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Arg:
    """An argument's ``value`` and the ``name`` errors call it by: a parameter (``seq_len``),
    a config key (``task.seq_len``) or an expression of them (``task.seq_len - 2 *
    task.num_tokens``)."""

    name: str
    value: int

    def __str__(self) -> str:
        """``name=value``, or ``name = value`` when the name is an expression."""
        return f"{self.name} = {self.value}" if " " in self.name else f"{self.name}={self.value}"


def named(**values: int) -> dict[str, Arg]:
    """Each keyword as an :class:`Arg` named by its keyword (a generator checking its own
    arguments)."""
    return {name: Arg(name, value) for name, value in values.items()}


def require(condition: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``condition``."""
    if not condition:
        raise ValueError(message)
