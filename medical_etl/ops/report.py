"""A short, readable account of what the warehouse holds (the end of ``make demo``)."""
from __future__ import annotations

from medical_etl.config import Settings
from medical_etl.db import conn_params, connect

TABLES = ["raw.telegram_messages", "raw.load_rejects", "raw.image_analyses", "raw.image_detections",
          "marts.dim_channels", "marts.dim_dates", "marts.fct_messages", "marts.fct_product_prices",
          "marts.fct_image_detections", "marts.fct_image_categories"]


def _rows(cur, sql: str) -> list[tuple]:
    try:
        cur.execute(sql)
        return cur.fetchall()
    except Exception:  # noqa: BLE001 - a table not built yet is reported as missing
        cur.connection.rollback()
        return []


def print_report(settings: Settings) -> None:
    conn = connect(conn_params(settings))
    try:
        with conn.cursor() as cur:
            print("\nRows per table")
            for t in TABLES:
                n = _rows(cur, f"SELECT count(*) FROM {t}")
                print(f"  {t:<32} {n[0][0] if n else 'missing':>8}")
            print("\nImage categories")
            for cat, n in _rows(cur, """SELECT image_category, count(*) FROM marts.fct_image_categories
                                        GROUP BY 1 ORDER BY 2 DESC"""):
                print(f"  {cat:<18} {n:>5}")
            print("\nTop products (mentions, price range in birr, channels)")
            for name, n, lo, hi, chans in _rows(cur, """
                    SELECT product_name_normalized, count(*), min(price_birr), max(price_birr),
                           string_agg(DISTINCT channel_username, ', ')
                    FROM marts.fct_product_prices GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10"""):
                price = f"{lo:,.0f}" if lo == hi else f"{lo:,.0f}-{hi:,.0f}"
                print(f"  {name[:40]:<40} {n:>3}  {price:>13}  {chans}")
    finally:
        conn.close()
    print(f"\nRun log: {(settings.logs_path / 'runs.jsonl').resolve()}")
