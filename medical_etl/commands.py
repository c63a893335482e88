"""Sub-commands of the CLI for the stages and jobs."""
from __future__ import annotations


def register(sub) -> None:
    pass
