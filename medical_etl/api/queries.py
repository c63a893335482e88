"""The API's SQL, on the marts and their rollups (medical_warehouse/models/marts/agg_*, search_messages).

Every function takes a cursor (dict rows) and plain values and returns plain dicts; reports read the
rollups through their indexes, so their cost does not grow with the number of posts.
"""
from __future__ import annotations

import base64
import json
from datetime import date

CATEGORIES = ["promotional", "product_display", "lifestyle", "other"]


class NotFound(LookupError):
    pass


def channel_exists(cur, channel: str) -> bool:
    cur.execute("SELECT 1 FROM marts.dim_channels WHERE channel_username = %s", (channel,))
    return cur.fetchone() is not None


def require_channel(cur, channel: str | None) -> None:
    if channel is not None and not channel_exists(cur, channel):
        raise NotFound(f"unknown channel {channel!r}")


def top_products(cur, *, limit: int, offset: int, channel: str | None, since: date | None,
                 until: date | None, kind: str | None = None, generic: str | None = None,
                 group: str = "product") -> dict:
    """Products (``group="product"``: one per dim_products row) or generics (``group="generic"``: all the
    products of one WHO INN together) by price mentions, filtered by channel, date window, kind and generic."""
    require_channel(cur, channel)
    p = dict(channel=channel, since=since, until=until, limit=limit, offset=offset, kind=kind,
             generic=generic.strip().lower() if generic else None)
    where = "channel_username = %(channel)s" if channel else "channel_username IS NULL"
    filters = """(%(kind)s::text IS NULL OR product_kind = %(kind)s)
                 AND (%(generic)s::text IS NULL OR generic_name = %(generic)s)"""
    if since is None and until is None and group == "product":
        cur.execute(f"""
            SELECT count(*) OVER () AS total, product_name_normalized AS product, product_key,
                   product_name AS display_name, generic_name, product_kind, strength, dosage_form,
                   1 AS products, mentions, posts, min_price_birr, median_price_birr, max_price_birr, channels,
                   first_seen_at, last_seen_at
            FROM marts.agg_product_prices WHERE {where} AND {filters}
            ORDER BY mentions DESC, product_name_normalized
            LIMIT %(limit)s OFFSET %(offset)s""", p)
    else:
        # From the per-day rollup alone (the all-channel rows, or the channel's): rank the products or
        # generics in the window, then sum this page's days; the median comes from the days' sorted prices.
        key = "product_key" if group == "product" else "generic_name"
        days = f"""{where} AND {filters} AND {key} IS NOT NULL
                  AND (%(since)s::date IS NULL OR date_day >= %(since)s::date)
                  AND (%(until)s::date IS NULL OR date_day <= %(until)s::date)"""
        # ties in the order of the names shown (a product's normalised name, or the generic)
        order = ("(SELECT a.product_name_normalized FROM marts.agg_product_prices AS a "
                 "WHERE a.product_key = agg_product_daily.product_key AND a.channel_username IS NULL)"
                 if group == "product" else "1")
        if group == "product":
            names = """a.product_name_normalized AS product, r.key AS product_key, a.product_name AS display_name,
                       a.generic_name, a.product_kind, a.strength, a.dosage_form, 1 AS products"""
            join = """JOIN marts.agg_product_prices AS a ON a.product_key = r.key AND a.channel_username IS NULL"""
        else:
            names = """r.key AS product, NULL AS product_key, r.key AS display_name, r.key AS generic_name,
                       'medicine' AS product_kind, NULL AS strength, NULL AS dosage_form, r.products"""
            join = ""
        cur.execute(f"""
            WITH ranked AS (
                SELECT {key} AS key, sum(mentions)::bigint AS mentions, count(DISTINCT product_key) AS products,
                       count(*) OVER () AS total
                FROM marts.agg_product_daily WHERE {days}
                GROUP BY 1 ORDER BY 2 DESC, {order} LIMIT %(limit)s OFFSET %(offset)s
            )
            SELECT r.total, {names}, r.mentions, d.posts, d.min_price_birr,
                   m.median_price_birr, d.max_price_birr, c.channels, d.first_seen_at, d.last_seen_at
            FROM ranked AS r
            {join}
            CROSS JOIN LATERAL (
                SELECT sum(posts)::bigint AS posts, min(min_price_birr) AS min_price_birr,
                       max(max_price_birr) AS max_price_birr, min(first_seen_at) AS first_seen_at,
                       max(last_seen_at) AS last_seen_at
                FROM marts.agg_product_daily WHERE {key} = r.key AND {days}
            ) AS d
            CROSS JOIN LATERAL (
                SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x.price)::numeric(14, 2) AS median_price_birr
                FROM marts.agg_product_daily AS p, unnest(p.prices) AS x (price)
                WHERE p.{key} = r.key AND {days.replace("channel_username", "p.channel_username")}
            ) AS m
            CROSS JOIN LATERAL (
                SELECT array_agg(DISTINCT channel_username ORDER BY channel_username) AS channels
                FROM marts.agg_product_daily
                WHERE {key} = r.key AND channel_username IS NOT NULL AND {filters}
                  AND (%(channel)s::text IS NULL OR channel_username = %(channel)s)
                  AND (%(since)s::date IS NULL OR date_day >= %(since)s::date)
                  AND (%(until)s::date IS NULL OR date_day <= %(until)s::date)
            ) AS c
            ORDER BY r.mentions DESC, 2""", p)
    rows = cur.fetchall()
    total = rows[0]["total"] if rows else _count_products(cur, p, where, filters, group) if offset else 0
    items = [{k: v for k, v in r.items() if k != "total"} for r in rows]
    return {"channel": channel, "since": since, "until": until, "kind": kind, "generic": p["generic"],
            "group": group, "items": items,
            "page": {"limit": limit, "offset": offset, "total": total,
                     "next_offset": offset + limit if offset + limit < total else None}}


def _count_products(cur, p: dict, where: str, filters: str, group: str) -> int:
    """Products in the filters (for a page past the end, which has no row to carry the total)."""
    key = "product_key" if group == "product" else "generic_name"
    cur.execute(f"""SELECT count(DISTINCT {key}) AS n FROM marts.agg_product_daily
                    WHERE {where} AND {filters} AND (%(since)s::date IS NULL OR date_day >= %(since)s::date)
                      AND (%(until)s::date IS NULL OR date_day <= %(until)s::date)""", p)
    return cur.fetchone()["n"]


def price_history(cur, name: str, *, channel: str | None, since: date | None, until: date | None) -> dict:
    """A product's (its name as top-products gives it) or a generic's (all its products') price per day and
    channel."""
    product = name.strip().lower()
    # a generic first (all its products: "amoxicillin" is also the name of the product without strength)
    cur.execute("""SELECT product_key, product_name, generic_name, channels FROM marts.agg_product_prices
                   WHERE generic_name = %s AND channel_username IS NULL ORDER BY mentions DESC""", (product,))
    heads, matched = cur.fetchall(), "generic"
    if not heads:
        cur.execute("""SELECT product_key, product_name, generic_name, channels FROM marts.agg_product_prices
                       WHERE product_name_normalized = %s AND channel_username IS NULL""", (product,))
        heads, matched = cur.fetchall(), "product"
    if not heads:
        raise NotFound(f"unknown product {name!r} (use a product or generic from /api/reports/top-products)")
    require_channel(cur, channel)
    keys = [h["product_key"] for h in heads]
    cur.execute("""
        SELECT d.date_day AS date, d.channel_username AS channel, sum(d.mentions)::bigint AS mentions,
               min(d.min_price_birr) AS min_price_birr,
               -- the median of all the products' prices of the day, from their sorted prices
               (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x.price)::numeric(14, 2)
                FROM marts.agg_product_daily AS p, unnest(p.prices) AS x (price)
                WHERE p.product_key = ANY(%(keys)s) AND p.channel_username = d.channel_username
                  AND p.date_day = d.date_day) AS median_price_birr,
               max(d.max_price_birr) AS max_price_birr
        FROM marts.agg_product_daily AS d
        WHERE d.product_key = ANY(%(keys)s) AND d.channel_username IS NOT NULL
          AND (%(channel)s::text IS NULL OR d.channel_username = %(channel)s)
          AND (%(since)s::date IS NULL OR d.date_day >= %(since)s::date)
          AND (%(until)s::date IS NULL OR d.date_day <= %(until)s::date)
        GROUP BY d.date_day, d.channel_username
        ORDER BY d.date_day, d.channel_username""", dict(keys=keys, channel=channel, since=since, until=until))
    points = cur.fetchall()
    channels_ = sorted({c for h in heads for c in h["channels"]})
    return {"product": product, "display_name": heads[0]["product_name"] if matched == "product" else product,
            "generic_name": heads[0]["generic_name"], "matched": matched,
            "products": [h["product_name"] for h in heads], "channel": channel, "since": since,
            "until": until, "channels": channels_, "points": points}


def channels(cur, *, limit: int, offset: int) -> dict:
    cur.execute("""
        SELECT count(*) OVER () AS total, channel_username AS channel, channel_title AS title,
               post_count AS posts, image_post_count AS photo_posts, image_post_share AS photo_share,
               avg_views, first_post_at, last_post_at
        FROM marts.dim_channels ORDER BY post_count DESC, channel_username
        LIMIT %s OFFSET %s""", (limit, offset))
    rows = cur.fetchall()
    total = rows[0]["total"] if rows else 0
    if not rows and offset:
        cur.execute("SELECT count(*) AS n FROM marts.dim_channels")
        total = cur.fetchone()["n"]
    return {"items": [{k: v for k, v in r.items() if k != "total"} for r in rows],
            "page": {"limit": limit, "offset": offset, "total": total,
                     "next_offset": offset + limit if offset + limit < total else None}}


def channel_activity(cur, channel: str, *, granularity: str, since: date | None, until: date | None) -> dict:
    require_channel(cur, channel)
    period = "date_day" if granularity == "day" else "date_trunc('week', date_day)::date"
    cur.execute(f"""
        SELECT {period} AS period_start, sum(posts)::bigint AS posts, sum(views)::bigint AS views,
               round(sum(views)::numeric / sum(posts), 1) AS avg_views,
               sum(photo_posts)::bigint AS photo_posts,
               round(sum(photo_posts)::numeric / sum(posts), 4) AS photo_share,
               sum(posts_with_prices)::bigint AS posts_with_prices, sum(prices_posted)::bigint AS prices_posted
        FROM marts.agg_channel_daily
        WHERE channel_username = %(c)s
          AND (%(since)s::date IS NULL OR date_day >= %(since)s::date)
          AND (%(until)s::date IS NULL OR date_day <= %(until)s::date)
        GROUP BY 1 ORDER BY 1""", dict(c=channel, since=since, until=until))
    return {"channel": channel, "granularity": granularity, "since": since, "until": until,
            "periods": cur.fetchall()}


def encode_cursor(rank: float, key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([rank, key]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        rank, key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(rank), str(key)
    except (ValueError, TypeError) as exc:
        raise ValueError("cursor is not one this API returned") from exc


SEARCH_CANDIDATES = 500  # the newest matches that are ranked (and paged through)
COUNT_CAP = 1000  # matches counted exactly up to this many


def search_messages(cur, query: str, *, channel: str | None, limit: int, cursor: str | None) -> dict:
    """Full-text search (websearch syntax: words, "phrases", -not, or) through the GIN index.

    Matches are first counted through the GIN index, up to ``COUNT_CAP``. When there are no more than
    that, all of them are ranked (read through the GIN index); for a more common query the newest
    ``SEARCH_CANDIDATES`` matches are ranked (read from the date index until there are enough). Either
    way a query's cost does not grow with the table. Pages continue with the returned cursor.
    """
    require_channel(cur, channel)
    after = decode_cursor(cursor) if cursor else None
    params = dict(q=query, channel=channel, limit=limit + 1, cap=COUNT_CAP + 1,
                  rank=after[0] if after else None, key=after[1] if after else None)
    cur.execute("""SELECT count(*) AS n FROM (
                       SELECT 1 FROM marts.search_messages
                       WHERE search_vector @@ websearch_to_tsquery('simple', %(q)s)
                         AND (%(channel)s::text IS NULL OR channel_username = %(channel)s)
                       LIMIT %(cap)s) AS capped""", params)
    total = cur.fetchone()["n"]
    if total == 0:
        return {"query": query, "total": 0, "total_exact": True, "ranked": 0, "next_cursor": None, "items": []}
    common = total > COUNT_CAP
    matches = """SELECT message_key, search_vector FROM marts.search_messages
                 WHERE search_vector @@ websearch_to_tsquery('simple', %(q)s)
                   AND (%(channel)s::text IS NULL OR channel_username = %(channel)s)"""
    if common:  # the newest matches only: the date index, read until there are enough
        matches += " ORDER BY message_date DESC LIMIT %(cand)s"
        params["cand"] = SEARCH_CANDIDATES
    cur.execute(f"""
        WITH candidates AS MATERIALIZED (
            SELECT s.message_key, ts_rank(s.search_vector, websearch_to_tsquery('simple', %(q)s)) AS rank
            FROM ({matches}) AS s
        )
        SELECT h.rank, h.message_key, m.channel_username AS channel, m.message_id, m.message_date, m.views,
               m.message_text AS text,
               ts_headline('simple', m.message_text, websearch_to_tsquery('simple', %(q)s),
                           'StartSel=«, StopSel=», MaxWords=30, MinWords=10, MaxFragments=2') AS snippet
        FROM (SELECT * FROM candidates
              WHERE %(rank)s::real IS NULL OR rank < %(rank)s::real
                 OR (rank = %(rank)s::real AND message_key > %(key)s)
              ORDER BY rank DESC, message_key LIMIT %(limit)s) AS h
        JOIN marts.fct_messages AS m ON m.message_key = h.message_key
        ORDER BY h.rank DESC, h.message_key""", params)
    rows = cur.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [{k: v for k, v in r.items() if k != "message_key"} for r in rows]
    nxt = encode_cursor(rows[-1]["rank"], rows[-1]["message_key"]) if more and rows else None
    return {"query": query, "total": min(total, COUNT_CAP), "total_exact": not common,
            "ranked": SEARCH_CANDIDATES if common else total, "next_cursor": nxt, "items": items}


GROUPS = ["with_photo", "without_photo", *CATEGORIES, "not_analysed"]


def visual_content(cur, *, top_classes: int, since: date | None = None, until: date | None = None) -> dict:
    """Per channel: its photo share, its analysed photos by image category, and the engagement (posts,
    average and median views) of its posts per image group; the same engagement over all channels; the
    most detected object classes. Over all days from the all-time rollups (dim_channels,
    agg_visual_content, agg_image_engagement); over a range of days from the daily ones
    (agg_channel_daily, agg_visual_daily). The object classes are counted over all days."""
    window = since is not None or until is not None
    p = dict(since=since, until=until)
    if not window:
        cur.execute("""
            SELECT c.channel_username AS channel, c.post_count AS posts, c.image_post_count AS photo_posts,
                   coalesce(jsonb_object_agg(v.image_category, v.photos) FILTER (WHERE v.image_category IS NOT NULL),
                            '{}'::jsonb) AS categories
            FROM marts.dim_channels AS c
            LEFT JOIN marts.agg_visual_content AS v ON v.channel_username = c.channel_username
            GROUP BY 1, 2, 3""")
        channels_ = cur.fetchall()
        cur.execute("""SELECT channel_username AS channel, image_group, posts, avg_views, median_views
                       FROM marts.agg_image_engagement""")
    else:
        days = """(%(since)s::date IS NULL OR date_day >= %(since)s::date)
                  AND (%(until)s::date IS NULL OR date_day <= %(until)s::date)"""
        cur.execute(f"""
            SELECT c.channel_username AS channel, coalesce(a.posts, 0) AS posts,
                   coalesce(a.photo_posts, 0) AS photo_posts, coalesce(v.categories, '{{}}'::jsonb) AS categories
            FROM marts.dim_channels AS c
            LEFT JOIN (SELECT channel_username, sum(posts)::bigint AS posts, sum(photo_posts)::bigint AS photo_posts
                       FROM marts.agg_channel_daily WHERE {days} GROUP BY 1) AS a
                ON a.channel_username = c.channel_username
            LEFT JOIN (SELECT channel_username, jsonb_object_agg(image_group, posts) AS categories
                       FROM (SELECT channel_username, image_group, sum(posts) AS posts FROM marts.agg_visual_daily
                             WHERE {days} AND image_group = ANY(%(categories)s) GROUP BY 1, 2) AS g
                       GROUP BY 1) AS v ON v.channel_username = c.channel_username""",
                    dict(p, categories=CATEGORIES))
        channels_ = cur.fetchall()
        # the days' views, one per post, each in its group and (with a photo) in with_photo too
        cur.execute(f"""
            SELECT d.channel_username AS channel, g.image_group, count(*) AS posts,
                   round(avg(x.views), 1) AS avg_views,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY x.views)::numeric(14, 1) AS median_views
            FROM marts.agg_visual_daily AS d
            CROSS JOIN LATERAL unnest(d.views_sorted) AS x (views)
            CROSS JOIN LATERAL (VALUES (d.image_group),
                                       (CASE WHEN d.image_group <> 'without_photo' THEN 'with_photo' END))
                AS g (image_group)
            WHERE {days} AND g.image_group IS NOT NULL
            GROUP BY GROUPING SETS ((d.channel_username, g.image_group), (g.image_group))""", p)
    engagement: dict = {}
    for r in cur.fetchall():
        engagement.setdefault(r["channel"], {})[r["image_group"]] = {
            "posts": r["posts"], "avg_views": r["avg_views"], "median_views": r["median_views"]}

    def groups(channel):
        mine = engagement.get(channel, {})
        return {g: mine.get(g, {"posts": 0, "avg_views": None, "median_views": None}) for g in GROUPS}

    out = []
    for r in channels_:
        cats = {k: int(r["categories"].get(k, 0)) for k in CATEGORIES}
        n = sum(cats.values())
        share = round(r["photo_posts"] / r["posts"], 4) if r["posts"] else 0.0
        out.append({"channel": r["channel"], "posts": r["posts"], "photo_posts": r["photo_posts"],
                    "photo_share": share, "photos_analysed": n, "categories": cats,
                    "category_share": {k: round(v / n, 4) if n else 0.0 for k, v in cats.items()},
                    "engagement": groups(r["channel"])})
    out.sort(key=lambda c: (-c["photo_share"], c["channel"]))
    cur.execute("""SELECT class_name, sum(objects)::bigint AS objects, sum(photos)::bigint AS photos
                   FROM marts.agg_detected_classes GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT %s""", (top_classes,))
    return {"since": since, "until": until, "categories": CATEGORIES, "groups": GROUPS, "channels": out,
            "engagement": groups(None), "top_classes": cur.fetchall()}
