"""medical_etl: Ethiopian medical Telegram channels to a tested PostgreSQL warehouse.

Public API (everything a notebook or a script needs):

- ``load_settings`` / ``Settings``: configuration, read once at the edge.
- ``connect`` / ``test_connection``: PostgreSQL (real or embedded).
- ``RunLog`` / ``track_run``: the JSON-lines run log.
"""
__version__ = "0.1.0"

from .config import ConfigError, Settings, load_settings  # noqa: E402
from .db import connect, test_connection  # noqa: E402
from .runlog import RunLog, track_run  # noqa: E402

__all__ = [
    "__version__", "ConfigError", "Settings", "load_settings", "connect", "test_connection",
    "RunLog", "track_run",
]
