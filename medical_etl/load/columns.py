"""The columns the load stage writes, from the lake's one description of a message record
(:data:`medical_etl.lake.RECORD`): names, SQL types, which are required, which count as a change."""
from __future__ import annotations

from medical_etl import lake

# (table column, lake field, kind), from the lake's record contract
FIELDS = [(f.column, f.name, f.kind) for f in lake.RECORD]
COLUMNS = [c for c, _, _ in FIELDS] + ["source_file", "source_position"]
REQUIRED = [f for _, f, kind in FIELDS if not kind.endswith("?")]
# Columns whose change makes an update (a fresh scraped_at alone does not).
COMPARED = [c for c in COLUMNS if c not in ("channel", "message_id", "scraped_at")]
# The SQL type of each validation kind (raw.telegram_messages holds the same).
SQL_TYPES = {"channel": "text", "id": "bigint", "int": "bigint", "count": "bigint", "ts": "timestamptz",
             "text": "text", "str": "text", "media_status": "text", "path": "text"}
COLUMN_TYPES = [(c, SQL_TYPES[kind.rstrip("?")]) for c, _, kind in FIELDS] + \
    [("source_file", "text"), ("source_position", "integer")]
COLUMN_LIST = ", ".join(COLUMNS)
