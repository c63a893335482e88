"""Settings: read once from the environment (and `.env`), validated, secrets masked.

Only the edges (scripts, the CLI, Make) build a :class:`Settings`; stages take
explicit arguments and never read the environment themselves.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from medical_etl import resources, secrets
from medical_etl.errors import ConfigError  # noqa: F401 - raised here, imported from here by callers
from medical_etl.secrets import Secret

DEFAULT_CHANNELS_FILE = Path(__file__).with_name("channels.txt")


@dataclass(frozen=True)
class Settings:
    db_host: str = ""
    db_port: int = 5432
    db_name: str = "medical_warehouse"
    db_user: str = "postgres"
    db_password: Secret = Secret("")
    db_connect_timeout_s: int = 5
    raw_data_path: Path = Path("data/raw")
    logs_path: Path = Path("logs")
    embedded_pg_path: Path = Path("data/pgserver")
    telegram_api_id: int | None = None
    telegram_api_hash: Secret = Secret("")
    telegram_session: Path = Path("data/telegram.session")
    telegram_string_session: Secret = Secret("")
    telegram_channels: tuple[str, ...] = ()
    telegram_channels_file: Path = DEFAULT_CHANNELS_FILE
    telegram_source: str = "api"
    refresh_days: int = 0
    flood_wait_cap_s: int = 300
    yolo_model: str = "yolov8n.pt"
    yolo_conf: float = 0.25
    yolo_iou: float = 0.7
    yolo_imgsz: int = 640
    yolo_batch: int = 8
    yolo_device: str = "auto"
    yolo_workers: int = 0
    yolo_offline: bool = True
    stage_timeout_s: int = 3600
    load_batch_rows: int = 5000
    log_level: str = "INFO"
    stage_retries: int = 2
    lock_wait_s: float | None = None  # LOCK_WAIT: how long a job that waits for the lock waits (None: its own)
    stage_retry_backoff_s: float = 10.0
    stage_retry_backoff_max_s: float = 300.0
    backup_path: Path = Path("backups")
    backup_keep: int = 7
    pg_bin_dir: Path | None = None
    log_retention_days: int = 30
    runlog_max_mb: float = 50.0
    dbt_project_dir: Path = dataclasses.field(default_factory=resources.dbt_project)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("Secret", Secret) and not isinstance(v, Secret):
                object.__setattr__(self, f.name, Secret(v or ""))
            if isinstance(getattr(self, f.name), Secret):
                secrets.register(getattr(self, f.name))

    @property
    def embedded(self) -> bool:
        """True when no DB_HOST is set: the private pgserver instance is used."""
        return not self.db_host

    def public_dict(self) -> dict:
        """The settings as plain values, secrets masked (for doctor and logs)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Secret):
                v = secrets.MASK if v else ""
            elif isinstance(v, Path):
                v = str(v)
            out[f.name] = v
        return out


# variable name -> (field name, parser)
def _int_between(lo: int, hi: int):
    def parse(raw: str) -> int:
        try:
            v = int(raw.strip())
        except ValueError:
            v = None
        if v is None or not lo <= v <= hi:
            raise ValueError(f"must be an integer from {lo} to {hi}, got {raw.strip()!r}")
        return v
    return parse


def _float(lo: float, hi: float):
    def parse(raw: str) -> float:
        try:
            v = float(raw.strip())
        except ValueError:
            v = None
        if v is None or not lo <= v <= hi:  # NaN fails the comparison too
            raise ValueError(f"must be a number from {lo} to {hi}, got {raw.strip()!r}")
        return v
    return parse


def _str(raw: str) -> str:
    return raw.strip()


def _secret(raw: str) -> Secret:
    secrets.register(raw)
    return Secret(raw)


def _pg_name(raw: str) -> str:
    """A database or role name: dbt writes the database between double quotes without escaping them,
    a control character cannot travel in psql's environment, and PostgreSQL cuts names at 63 bytes."""
    v = raw.strip()
    bad = next((c for c in v if c == '"' or not c.isprintable()), None)
    if bad is not None:
        raise ValueError(f"must not contain {bad!r} (dbt and psql cannot quote it), got {v!r}")
    if len(v.encode()) > 63:
        raise ValueError(f"must be at most 63 bytes (PostgreSQL would cut it), got {len(v.encode())}")
    return v


def _path(raw: str) -> Path:
    return Path(raw.strip()).expanduser()


def _channels(raw: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in raw.replace("\n", ",").split(",") if c.strip())


def _bool(raw: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected 1/0, true/false, yes/no or on/off, got {raw!r}")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(raw: str) -> str:
    v = raw.strip().upper()
    v = "WARNING" if v == "WARN" else v
    if v in LOG_LEVELS:
        return v
    raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {raw!r}")


def _device(raw: str) -> str:
    v = raw.strip().lower()
    if v in ("cpu", "cuda", "auto", "mps") or v.isdigit() or v.startswith("cuda:"):
        return v
    raise ValueError(f"expected cpu, cuda, cuda:N or auto, got {raw!r}")


VARIABLES: dict[str, tuple[str, object]] = {
    "DB_HOST": ("db_host", _str),
    "DB_PORT": ("db_port", _int_between(1, 65535)),
    "DB_NAME": ("db_name", _pg_name),
    "DB_USER": ("db_user", _pg_name),
    "DB_PASSWORD": ("db_password", _secret),
    "DB_CONNECT_TIMEOUT": ("db_connect_timeout_s", _int_between(1, 600)),
    "RAW_DATA_PATH": ("raw_data_path", _path),
    "LOGS_PATH": ("logs_path", _path),
    "EMBEDDED_PG_PATH": ("embedded_pg_path", _path),
    "TELEGRAM_API_ID": ("telegram_api_id", _int_between(1, 2**31 - 1)),  # a 32-bit int in Telegram's API
    "TELEGRAM_API_HASH": ("telegram_api_hash", _secret),
    "TELEGRAM_SESSION": ("telegram_session", _path),
    "TELEGRAM_STRING_SESSION": ("telegram_string_session", _secret),
    "TELEGRAM_CHANNELS": ("telegram_channels", _channels),
    "TELEGRAM_CHANNELS_FILE": ("telegram_channels_file", _path),
    "TELEGRAM_SOURCE": ("telegram_source", _str),
    "REFRESH_DAYS": ("refresh_days", _int_between(0, 3650)),
    "FLOOD_WAIT_CAP": ("flood_wait_cap_s", _int_between(0, 86400)),
    "YOLO_MODEL": ("yolo_model", _str),
    "YOLO_CONF": ("yolo_conf", _float(0.0, 1.0)),
    "YOLO_IOU": ("yolo_iou", _float(0.0, 1.0)),
    "YOLO_IMGSZ": ("yolo_imgsz", _int_between(32, 8192)),
    "YOLO_BATCH": ("yolo_batch", _int_between(1, 1024)),
    "YOLO_DEVICE": ("yolo_device", _device),
    "YOLO_WORKERS": ("yolo_workers", _int_between(0, 256)),
    "YOLO_OFFLINE": ("yolo_offline", _bool),
    "STAGE_TIMEOUT": ("stage_timeout_s", _int_between(1, 86400)),
    "LOAD_BATCH_ROWS": ("load_batch_rows", _int_between(1, 1_000_000)),
    "LOG_LEVEL": ("log_level", _log_level),
    "STAGE_RETRIES": ("stage_retries", _int_between(0, 10)),
    "LOCK_WAIT": ("lock_wait_s", _float(0.0, 7 * 86400.0)),
    "STAGE_RETRY_BACKOFF": ("stage_retry_backoff_s", _float(0.0, 3600.0)),
    "STAGE_RETRY_BACKOFF_MAX": ("stage_retry_backoff_max_s", _float(0.0, 86400.0)),
    "BACKUP_PATH": ("backup_path", _path),
    "BACKUP_KEEP": ("backup_keep", _int_between(1, 1000)),
    "PG_BIN_DIR": ("pg_bin_dir", _path),
    "LOG_RETENTION_DAYS": ("log_retention_days", _int_between(1, 3650)),
    "RUNLOG_MAX_MB": ("runlog_max_mb", _float(0.001, 100_000.0)),
    "DBT_PROJECT_DIR": ("dbt_project_dir", _path),
}

WRITABLE_DIRS = ("RAW_DATA_PATH", "LOGS_PATH")


def load_settings(
    env: Mapping[str, str] | None = None,
    dotenv_path: str | os.PathLike | None = ".env",
    create_dirs: bool = True,
) -> Settings:
    """Build the settings from ``env`` (default ``os.environ``) over ``.env``.

    Values already in the environment win over ``.env``; empty values mean
    "use the default" except for DB_HOST, where empty selects the embedded server.
    Raises :class:`ConfigError` naming the variable on any bad value.
    """
    merged: dict[str, str] = {}
    if dotenv_path and Path(dotenv_path).is_file():
        merged.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    merged.update(os.environ if env is None else env)

    kwargs: dict[str, object] = {}
    for var, (name, parse) in VARIABLES.items():
        raw = merged.get(var)
        if raw is None or (raw.strip() == "" and var != "DB_HOST"):
            continue
        try:
            kwargs[name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(var, secrets.mask(exc)) from None
    settings = Settings(**kwargs)

    if create_dirs:
        for var in WRITABLE_DIRS:
            path = getattr(settings, VARIABLES[var][0])
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(var, f"cannot create directory {str(path)!r}: {exc.strerror}") from None
            if not os.access(path, os.W_OK):
                raise ConfigError(var, f"directory {str(path)!r} is not writable")
    return settings
