"""Versioned SQL migrations (``medical_etl/migrations/NNN_name.sql``), applied idempotently.

Each file runs once. The pending ones run in file-name order in one transaction, under an advisory
lock so two processes starting together do not race: either all of them apply or none does. Applied
versions are recorded in ``raw.schema_migrations``. A file renamed after it shipped keeps counting as
applied under its old name (``RENAMED``).
"""
from __future__ import annotations

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_LOCK_KEY = 0x6D65645F65746C  # "med_etl"
RENAMED = {"005_message_metadata": "004_message_metadata"}  # two files once shared the number 004


def migrate(conn) -> list[str]:
    """Apply pending migrations on ``conn``; return the versions applied now."""
    applied_now = []
    with conn:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
            cur.execute("CREATE SCHEMA IF NOT EXISTS raw")
            cur.execute("""CREATE TABLE IF NOT EXISTS raw.schema_migrations (
                               version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())""")
            cur.execute("SELECT version FROM raw.schema_migrations")
            done = {r[0] for r in cur.fetchall()}
            for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
                version = path.stem
                if version in done:
                    continue
                if RENAMED.get(version) in done:  # applied under its old name: record the new one
                    cur.execute("INSERT INTO raw.schema_migrations (version) VALUES (%s)", (version,))
                    continue
                cur.execute(path.read_text(encoding="utf-8"))
                cur.execute("INSERT INTO raw.schema_migrations (version) VALUES (%s)", (version,))
                applied_now.append(version)
    return applied_now
