"""Stage 3, first step: the catalogue. Reads the offers of every post text not yet read by this reader
version and resolves every product text not yet resolved by this resolver version, into raw tables that
dbt builds the product marts on (``stg_catalogue_offers``, ``stg_product_resolutions``).

Each distinct text is read once (a post reposted daily is one text); a text read is remembered with the
reader's version in ``raw.catalogue_texts``, its offers in ``raw.catalogue_offers``, both written in one
transaction per batch, so a crash mid-run leaves whole texts and a re-run reads only the rest. Each distinct
product text (normalised) is resolved once per resolver version in ``raw.product_resolutions``. A daily run
reads only the posts loaded since the last run; a new reader or resolver version (any change to their code
or lexicon) reads or resolves everything again, once.
"""
from __future__ import annotations

import time

from psycopg2.extras import execute_values

from medical_etl.db import ConnParams, analyze_if_stale, connect_warehouse, expect_params
from medical_etl.transform.catalogue.identity import Resolver, normalise, resolver_version
from medical_etl.transform.catalogue.prices import parser_version, read_offers

BATCH = 500

def build_catalogue(db: ConnParams, *, batch: int = BATCH, resolver: Resolver | None = None) -> dict:
    """Read the offers of new or edited post texts and resolve their new product texts; return a summary:
    ``texts_read``, ``offers_found``, ``products_resolved`` (resolved now), ``products_remembered`` (found
    resolved before), both versions and the seconds and throughput of each step."""
    expect_params(db, "build_catalogue")
    t0 = time.perf_counter()
    parser, resolver_v = parser_version(), resolver_version()
    resolving = _Resolving(resolver_v, resolver)
    conn = connect_warehouse(db)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT parser_version, resolver_version, messages_until FROM raw.catalogue_state")
            state = cur.fetchone()
            cur.execute("SELECT max(updated_at) FROM raw.telegram_messages")
            newest = cur.fetchone()[0]
        since = state[2] if state and state[0] == parser else None
        read = _read_texts(conn, parser, since, batch, resolving)
        t1 = time.perf_counter()
        if not state or state[1] != resolver_v:
            # a new resolver (or a first run that may have stopped half-way): every product text lacking a
            # resolution of this version, whatever text it came from
            with conn, conn.cursor() as cur:
                cur.execute("""SELECT o.product_text_key, min(o.product_text) FROM raw.catalogue_offers AS o
                               WHERE NOT EXISTS (SELECT 1 FROM raw.product_resolutions AS r
                                                 WHERE r.product_text_key = o.product_text_key
                                                   AND r.resolver_version = %s)
                               GROUP BY 1""", (resolver_v,))
                todo = cur.fetchall()
            for i in range(0, len(todo), batch):
                with conn, conn.cursor() as cur:
                    resolving.write(cur, todo[i:i + batch])
        with conn, conn.cursor() as cur:
            cur.execute("""INSERT INTO raw.catalogue_state (id, parser_version, resolver_version, messages_until)
                           VALUES (true, %s, %s, %s)
                           ON CONFLICT (id) DO UPDATE SET parser_version = EXCLUDED.parser_version,
                               resolver_version = EXCLUDED.resolver_version,
                               messages_until = EXCLUDED.messages_until""", (parser, resolver_v, newest))
        if read["texts"] or resolving.resolved:  # the transform's joins are planned from their statistics
            analyze_if_stale(conn, ["raw.catalogue_texts", "raw.catalogue_offers", "raw.product_resolutions"])
    finally:
        conn.close()
    t2 = time.perf_counter()
    return {
        "parser_version": parser,
        "resolver_version": resolver_v,
        "texts_read": read["texts"],
        "offers_found": read["offers"],
        "products_resolved": resolving.resolved,
        "products_remembered": resolving.remembered,
        "read_seconds": round(t1 - t0, 3),
        "resolve_seconds": round(t2 - t1, 3),
        "texts_per_s": round(read["texts"] / (t1 - t0), 1) if read["texts"] else None,
        "resolver_load_seconds": round(resolving.load_seconds, 3),
        "resolutions_per_s": round(resolving.resolved / resolving.seconds, 1) if resolving.resolved else None,
    }


class _Resolving:
    """Resolutions of one version, written in the caller's transaction; the resolver (a few seconds to
    build) is built at the first product text that needs it."""

    def __init__(self, version: str, resolver: Resolver | None):
        self.version, self.resolver = version, resolver
        self.resolved = self.remembered = 0
        self.seconds = self.load_seconds = 0.0

    def new_keys(self, cur, keys: set[str]) -> list[tuple[str, str]]:
        """Of ``keys``, those with no resolution of this version, each with one of its product texts."""
        cur.execute("""SELECT k.key, (SELECT min(product_text) FROM raw.catalogue_offers WHERE product_text_key = k.key)
                       FROM unnest(%s::text[]) AS k (key)
                       WHERE NOT EXISTS (SELECT 1 FROM raw.product_resolutions AS r
                                         WHERE r.product_text_key = k.key AND r.resolver_version = %s)""",
                    (sorted(keys), self.version))
        todo = cur.fetchall()
        self.remembered += len(keys) - len(todo)
        return todo

    def write(self, cur, todo: list[tuple[str, str]]) -> None:
        if not todo:
            return
        if self.resolver is None:
            t = time.perf_counter()
            self.resolver = Resolver()
            self.load_seconds = time.perf_counter() - t
        t = time.perf_counter()
        rows = []
        for key, text in todo:
            p = self.resolver.resolve(text)
            rows.append((key, self.version, p.product_name, p.generic_name, p.strength, p.dosage_form,
                         p.product_kind, p.identity_key, p.match))
        execute_values(cur, """
            INSERT INTO raw.product_resolutions (product_text_key, resolver_version, product_name,
                generic_name, strength, dosage_form, product_kind, identity_key, match) VALUES %s
            ON CONFLICT (product_text_key) DO UPDATE SET resolver_version = EXCLUDED.resolver_version,
                product_name = EXCLUDED.product_name, generic_name = EXCLUDED.generic_name,
                strength = EXCLUDED.strength, dosage_form = EXCLUDED.dosage_form,
                product_kind = EXCLUDED.product_kind, identity_key = EXCLUDED.identity_key,
                match = EXCLUDED.match, resolved_at = clock_timestamp()""", rows)
        self.resolved += len(rows)
        self.seconds += time.perf_counter() - t


def _read_texts(conn, parser: str, since, batch: int, resolving: _Resolving) -> dict:
    """Read every text not read by ``parser`` (only those of posts updated after ``since`` when given); each
    batch's texts, offers and new resolutions commit together."""
    texts = offers = 0
    seen: set[str] = set()
    # WITH HOLD: each batch commits while the texts are still read
    with conn.cursor(name="catalogue_texts", withhold=True) as src:
        src.itersize = batch
        src.execute("""
            SELECT m.text_hash, m.message_text
            FROM (SELECT md5(message_text) AS text_hash, message_text FROM raw.telegram_messages
                  WHERE message_text <> '' AND (%(since)s::timestamptz IS NULL OR updated_at > %(since)s)) AS m
            WHERE NOT EXISTS (SELECT 1 FROM raw.catalogue_texts AS c
                              WHERE c.text_hash = m.text_hash AND c.parser_version = %(parser)s)""",
                    dict(since=since, parser=parser))
        pending: list[tuple[str, str]] = []
        with conn.cursor() as out:
            for text_hash, text in src:
                if text_hash in seen:
                    continue
                seen.add(text_hash)
                pending.append((text_hash, text))
                if len(pending) >= batch:
                    offers += _write_batch(out, parser, pending, resolving)
                    conn.commit()
                    texts += len(pending)
                    pending = []
            if pending:
                offers += _write_batch(out, parser, pending, resolving)
                texts += len(pending)
    conn.commit()
    return {"texts": texts, "offers": offers}


def _write_batch(cur, parser: str, pending: list[tuple[str, str]], resolving: _Resolving) -> int:
    rows, texts, keys = [], [], set()
    for text_hash, text in pending:
        found = read_offers(text)
        texts.append((text_hash, parser, len(found)))
        for o in found:
            key = normalise(o.product_text)
            keys.add(key)
            rows.append((text_hash, o.line_no, o.match_no, o.product_text, key, o.price_birr, o.currency_text,
                         o.source_line))
    cur.execute("DELETE FROM raw.catalogue_texts WHERE text_hash = ANY(%s)", ([t[0] for t in texts],))
    execute_values(cur, "INSERT INTO raw.catalogue_texts (text_hash, parser_version, offers) VALUES %s", texts)
    if rows:
        execute_values(cur, """INSERT INTO raw.catalogue_offers (text_hash, line_no, match_no, product_text,
                               product_text_key, price_birr, currency_text, source_line) VALUES %s""", rows)
        resolving.write(cur, resolving.new_keys(cur, keys))
    return len(rows)
