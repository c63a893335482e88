"""The API's own settings (API_*), read once at the CLI edge like the pipeline's.

``API_HOST`` (default 127.0.0.1), ``API_PORT`` (8000), ``API_KEYS`` (comma-separated bearer keys; required
to bind a non-loopback address), ``API_RATE_LIMIT`` (requests per minute per key, default 600),
``API_CORS_ORIGINS`` (comma-separated origins; CORS is off when empty; ``*`` is refused together with
keys), ``API_DB_POOL`` (connections, 8), ``API_CACHE_MAX_AGE`` (seconds a browser may reuse an answer before
asking again with its ETag, 60).
"""
from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from medical_etl import secrets
from medical_etl.config import ConfigError


@dataclass(frozen=True)
class ApiSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    keys: tuple[secrets.Secret, ...] = ()
    rate_limit_per_min: int = 600
    cors_origins: tuple[str, ...] = ()
    pool_size: int = 8
    cache_max_age_s: int = 60

    def __repr__(self) -> str:  # never the keys
        return (f"ApiSettings(host={self.host!r}, port={self.port}, keys={len(self.keys)}, "
                f"rate_limit_per_min={self.rate_limit_per_min}, cors_origins={self.cors_origins!r})")

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def _setting_int(var: str, raw: str, lo: int, hi: int) -> int:
    try:
        v = int(raw.strip())
    except ValueError:
        v = None
    if v is None or not lo <= v <= hi:
        raise ConfigError(var, f"must be an integer from {lo} to {hi}, got {raw.strip()!r}")
    return v


def _list(raw: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (raw or "").split(",") if x.strip())


def load_api_settings(env: Mapping[str, str] | None = None, dotenv_path: str | os.PathLike | None = ".env",
                      **overrides) -> ApiSettings:
    """API settings from ``env`` (default ``os.environ``) over ``.env``; ``overrides`` (CLI flags) win."""
    merged: dict[str, str] = {}
    if dotenv_path and Path(dotenv_path).is_file():
        merged.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    merged.update(os.environ if env is None else env)
    kw: dict = {}
    if merged.get("API_HOST", "").strip():
        kw["host"] = merged["API_HOST"].strip()
    if merged.get("API_PORT", "").strip():
        kw["port"] = _setting_int("API_PORT", merged["API_PORT"], 1, 65535)
    keys = _list(merged.get("API_KEYS"))
    for k in keys:
        if len(k) < 16:
            raise ConfigError("API_KEYS", "each key must be at least 16 characters")
        secrets.register(k)
    kw["keys"] = tuple(secrets.Secret(k) for k in keys)
    if merged.get("API_RATE_LIMIT", "").strip():
        kw["rate_limit_per_min"] = _setting_int("API_RATE_LIMIT", merged["API_RATE_LIMIT"], 1, 1_000_000)
    kw["cors_origins"] = _list(merged.get("API_CORS_ORIGINS"))
    if "*" in kw["cors_origins"] and keys:
        # '*' lets every web page call the API from its visitors' browsers: with keys, name the front-ends.
        raise ConfigError("API_CORS_ORIGINS", "'*' is refused together with API_KEYS: list the origins "
                          "that may call the API (e.g. https://dashboard.example.org)")
    if merged.get("API_DB_POOL", "").strip():
        kw["pool_size"] = _setting_int("API_DB_POOL", merged["API_DB_POOL"], 1, 100)
    if merged.get("API_CACHE_MAX_AGE", "").strip():
        kw["cache_max_age_s"] = _setting_int("API_CACHE_MAX_AGE", merged["API_CACHE_MAX_AGE"], 0, 86400)
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return ApiSettings(**kw)
