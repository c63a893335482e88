"""Doctor checks for the stage tools: dbt, the YOLO weights, the Telegram session."""
from __future__ import annotations

from .config import Settings


def checks(settings: Settings):
    return iter(())
