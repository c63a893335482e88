"""A short, readable account of what the warehouse holds (the end of ``make demo``)."""
from __future__ import annotations

from medical_etl.config import Settings
from medical_etl.db import conn_params, connect

TABLES = ["raw.telegram_messages", "raw.load_rejects", "raw.image_analyses", "raw.image_detections",
          "marts.dim_channels", "marts.dim_dates", "marts.dim_products", "marts.fct_messages", "marts.fct_product_prices",
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
            print("\nTop products (mentions, price range in birr, kind, generic, channels)")
            for name, n, lo, hi, kind, generic, chans in _rows(cur, """
                    SELECT d.product_name, count(*), min(f.price_birr), max(f.price_birr), d.product_kind,
                           d.generic_name, string_agg(DISTINCT f.channel_username, ', ')
                    FROM marts.fct_product_prices AS f JOIN marts.dim_products AS d USING (product_key)
                    GROUP BY d.product_key, 1, 5, 6 ORDER BY 2 DESC, 1 LIMIT 10"""):
                print(f"  {name[:40]:<40} {n:>3}  {_range(lo, hi):>13}  {kind:<9} {generic or '-':<24} {chans}")
            print("\nTop generics (mentions, products, price range in birr)")
            for generic, n, products, lo, hi in _rows(cur, """
                    SELECT d.generic_name, count(*), count(DISTINCT d.product_key), min(f.price_birr),
                           max(f.price_birr)
                    FROM marts.fct_product_prices AS f JOIN marts.dim_products AS d USING (product_key)
                    WHERE d.generic_name IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 10"""):
                print(f"  {generic[:40]:<40} {n:>3}  {products:>3} products  {_range(lo, hi):>13}")
    finally:
        conn.close()
    print(f"\nRun log: {(settings.logs_path / 'runs.jsonl').resolve()}")


def _range(lo, hi) -> str:
    return f"{lo:,.0f}" if lo == hi else f"{lo:,.0f}-{hi:,.0f}"
