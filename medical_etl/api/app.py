"""The FastAPI application: JSON endpoints on the marts, the dashboard at ``/``, OpenAPI docs at ``/docs``.

Build it with :func:`create_app` (explicit connection parameters, paths and access settings); the
CLI's ``serve`` reads the settings and runs it under uvicorn.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import asynccontextmanager
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from medical_etl import __version__
from medical_etl.api import caching, exports, models, queries
from medical_etl.api.access import AUTH_FAILURES_PER_MIN, KeyRing, RateLimiter
from medical_etl.api.database import DatabaseUnavailable, ReadOnlyPool
from medical_etl.api.settings import ApiSettings
from medical_etl.db import ConnParams
from medical_etl.secrets import mask

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parents[1] / "static"
DASHBOARD = Path(__file__).with_name("dashboard.html")
STATIC_FILES = {  # everything the pages load, served by the package itself (no CDN)
    "dashboard.js": "text/javascript", "echarts.min.js": "text/javascript", "echarts.LICENSE": "text/plain",
    "echarts.NOTICE": "text/plain", "swagger-ui/swagger-ui-bundle.js": "text/javascript",
    "swagger-ui/swagger-ui.css": "text/css", "swagger-ui/LICENSE": "text/plain", "swagger-ui/NOTICE": "text/plain",
}


Channel = Annotated[str | None, Query(max_length=200, description="channel username, e.g. tikvahpharma")]
Since = Annotated[date | None, Query(description="first day (UTC), inclusive, YYYY-MM-DD")]
Until = Annotated[date | None, Query(description="last day (UTC), inclusive, YYYY-MM-DD")]
AsFormat = Annotated[exports.Format | None, Query(alias="format", description="json (the default), csv or ndjson; "
                                                  "or ask with Accept: text/csv / application/x-ndjson")]


class ApiError(Exception):
    def __init__(self, status: int, message: str, parameter: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.parameter, self.headers = status, message, parameter, headers


def _printable(text: str) -> str:
    """``text`` with control characters escaped (``\\x00``, ``\\n``): one log line, no raw NUL in it."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _reject_nul(request: Request) -> None:
    """Every path and query parameter, before any endpoint: a NUL is a 422 naming it (PostgreSQL cannot
    take one in a string)."""
    for name, value in (*request.path_params.items(), *request.query_params.multi_items()):
        if "\x00" in name or "\x00" in str(value):
            name = _printable(name)
            raise ApiError(422, f"invalid parameter {name!r}: it contains a NUL character", name)


def _error(status: int, message: str, parameter: str | None = None, detail=None, headers=None) -> JSONResponse:
    body = {"error": message, "status": status}
    if parameter:
        body["parameter"] = parameter
    if detail:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers)


class _StatusCache:
    """The asset view is read at most every ``ttl_s`` (it walks the lake and parses the run log)."""

    def __init__(self, ttl_s: float):
        self.ttl_s, self.value, self.at = ttl_s, None, 0.0
        self.lock = threading.Lock()

    def get(self, compute):
        with self.lock:
            if self.value is None or time.monotonic() - self.at > self.ttl_s:
                self.value, self.at = compute(), time.monotonic()
            return self.value


def create_app(
    db: ConnParams,
    *,
    logs_path: Path,
    lake_path: Path,
    api: ApiSettings | None = None,
    status_ttl_s: float = 30.0,
) -> FastAPI:
    """The API over the warehouse at ``db`` (read-only connections), the run log and the lake."""
    api = api or ApiSettings()
    pool = ReadOnlyPool(db, size=api.pool_size)
    version = caching.WarehouseVersion(db)
    keys = KeyRing(api.keys)
    limiter = RateLimiter(api.rate_limit_per_min)
    failures = RateLimiter(AUTH_FAILURES_PER_MIN)  # per client address
    status_cache = _StatusCache(status_ttl_s)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        pool.close()  # the server's sessions end with it, not when the garbage collector gets to them
        version.close()

    app = FastAPI(title="medical_etl analytical API", version=__version__,
                  description="Products, prices in birr (ETB), channels and images from Ethiopian medical, "
                              "pharmacy and cosmetics Telegram channels. Read-only.",
                  docs_url=None, redoc_url=None,  # /docs is served below from the package, not a CDN
                  lifespan=lifespan,
                  dependencies=[Depends(_reject_nul)],
                  responses={401: {"model": models.Error}, 422: {"model": models.Error},
                             429: {"model": models.Error}, 503: {"model": models.Error}})
    app.state.pool, app.state.warehouse_version = pool, version
    app.add_middleware(GZipMiddleware, minimum_size=2048)
    if api.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(api.cors_origins), allow_methods=["GET"],
                           allow_headers=["Authorization"])

    # --- errors: JSON with a message, never a stack trace ---------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, exc.parameter, headers=exc.headers)

    @app.exception_handler(queries.NotFound)
    async def _not_found(request: Request, exc: queries.NotFound):
        return _error(404, str(exc.args[0]))

    @app.exception_handler(DatabaseUnavailable)
    async def _unavailable(request: Request, exc: DatabaseUnavailable):
        # The message says what happened before its first colon; after it come the server's details
        # (host, port, user), which are for the server log only.
        log.warning("answering 503: %s", exc)
        return _error(503, str(exc).partition(":")[0], headers={"Retry-After": "10"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        loc = [str(p) for p in first.get("loc", ())[1:]]  # loc[0] says where: query, path, header
        param = ".".join(loc) or None
        detail = [{"parameter": ".".join(str(p) for p in e.get("loc", ())[1:]), "message": e.get("msg")}
                  for e in errs]
        return _error(422, f"invalid parameter {param!r}: {first.get('msg', 'invalid value')}", param, detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        msg = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and msg == "Not Found":
            msg = f"no such endpoint: {request.url.path} (see /docs)"
        return _error(exc.status_code, msg, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.error("unexpected error on %s: %s: %s", _printable(request.url.path), type(exc).__name__,
                  _printable(mask(exc)))
        return _error(500, "internal error (logged on the server)")

    # --- access --------------------------------------------------------------------------------------
    def authorize(request: Request) -> None:
        if not keys:
            return
        address = request.client.host if request.client else "unknown"
        # Refused before its key is looked at: a 200 for the right key among the 429s would let the
        # guessing go on at full speed.
        wait = failures.wait(address)
        if wait:
            raise ApiError(429, f"too many failed authentications from {address} "
                           f"({AUTH_FAILURES_PER_MIN} per minute)", headers={"Retry-After": str(max(1, round(wait)))})
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        key_id = keys.identify(token.strip()) if scheme.lower() == "bearer" else None
        if key_id is None:
            failures.allow(address)
            raise ApiError(401, "missing or invalid API key (send Authorization: Bearer <key>)",
                           headers={"WWW-Authenticate": "Bearer"})
        ok, wait = limiter.allow(key_id)
        if not ok:
            raise ApiError(429, f"rate limit of {api.rate_limit_per_min} requests per minute exceeded",
                           headers={"Retry-After": str(max(1, round(wait)))})

    guarded = [Depends(authorize)]

    def _check_range(since, until):
        if since and until and since > until:
            raise ApiError(422, "invalid parameter 'until': it is before 'since'", "until")

    def reply(request: Request, as_format: str | None, model: type[models.BaseModel], query, *,
              rows: str, item: type[models.BaseModel], report: str, parts: tuple = ()) -> Response:
        """The answer in the format asked for, validated by ``model``, with ``ETag`` / ``Last-Modified`` of
        the warehouse's version; 304 (and no query run) when the client holds this version already.
        ``query(cursor)`` returns the payload; ``rows`` names its list that CSV and NDJSON give."""
        fmt = exports.negotiate(as_format, request.headers.get("accept"))
        current = version.get()
        headers = {"Vary": "Accept, Authorization"}
        if current is None:  # not known: answer, and let nothing keep it
            headers["Cache-Control"] = "private, no-cache"
        else:
            query_string = "&".join(sorted(f"{k}={v}" for k, v in request.query_params.multi_items()))
            tag = caching.etag(current, fmt, request.url.path, query_string)
            headers.update({"ETag": tag, "Last-Modified": caching.last_modified(current),
                            "Cache-Control": f"private, max-age={api.cache_max_age_s}"})
            if caching.not_modified(request.headers.get("if-none-match"),
                                    request.headers.get("if-modified-since"), tag, current):
                return Response(status_code=304, headers=headers)
        with pool.cursor() as cur:
            answer = model.model_validate(query(cur))
        if fmt == "json":  # pydantic's own serialiser: no dict of Python values built first
            return Response(answer.model_dump_json(), media_type="application/json", headers=headers)
        items = answer.model_dump(mode="json")[rows]
        day = (current.built_at if current else datetime.now(timezone.utc)).astimezone(timezone.utc).date()
        headers["Content-Disposition"] = \
            f'attachment; filename="{exports.filename(report, day.isoformat(), fmt, *parts)}"'
        lines = exports.csv_lines(items, exports.columns(item, items)) if fmt == "csv" else \
            exports.ndjson_lines(items)
        return StreamingResponse(lines, media_type=exports.MEDIA_TYPES[fmt], headers=headers)

    # --- endpoints -----------------------------------------------------------------------------------
    @app.get("/health", response_model=models.Health, tags=["ops"])
    def health():
        """Liveness and database reachability (503 when the database cannot be reached)."""
        try:
            with pool.cursor() as cur:
                cur.execute("SELECT 1")
            return {"status": "ok", "database": "ok", "version": __version__}
        except DatabaseUnavailable:
            return JSONResponse({"status": "degraded", "database": "unreachable", "version": __version__},
                                status_code=503)

    @app.get("/api/reports/top-products", response_model=models.TopProducts, dependencies=guarded,
             tags=["reports"])
    def top_products(request: Request, limit: Annotated[int, Query(ge=1, le=200)] = 10,
                     offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
                     channel: Channel = None, since: Since = None, until: Until = None,
                     kind: Annotated[Literal["medicine", "cosmetic", "baby_food", "device", "other"] | None,
                                     Query(description="only products of this kind")] = None,
                     generic: Annotated[str | None, Query(max_length=200, description="only the products of this "
                                                          "generic (WHO INN, e.g. amoxicillin)")] = None,
                     group: Annotated[Literal["product", "generic"],
                                      Query(description="rank products, or generics (all their products "
                                                        "together)")] = "product",
                     as_format: AsFormat = None):
        """Products (or generics) by number of price mentions, with generic, kind, strength and form, min /
        median / max price in birr and their channels."""
        _check_range(since, until)
        return reply(request, as_format, models.TopProducts,
                     lambda cur: queries.top_products(cur, limit=limit, offset=offset, channel=channel, since=since,
                                                      until=until, kind=kind, generic=generic, group=group),
                     rows="items", item=models.TopProduct, report="top-products", parts=(channel, generic))

    @app.get("/api/products/{name:path}/prices", response_model=models.PriceHistory, dependencies=guarded,
             tags=["reports"])
    def product_prices(request: Request, name: Annotated[str, PathParam(min_length=1, max_length=300)],
                       channel: Channel = None, since: Since = None, until: Until = None,
                       as_format: AsFormat = None):
        """One product's price in birr per day and channel (min / median / max and mentions); a generic name
        (e.g. amoxicillin) gives all its products' prices together."""
        _check_range(since, until)
        return reply(request, as_format, models.PriceHistory,
                     lambda cur: queries.price_history(cur, name, channel=channel, since=since, until=until),
                     rows="points", item=models.PricePoint, report="prices", parts=(name, channel))

    @app.get("/api/channels", response_model=models.Channels, dependencies=guarded, tags=["channels"])
    def channels(request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 100,
                 offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0, as_format: AsFormat = None):
        """The channels, most active first."""
        return reply(request, as_format, models.Channels,
                     lambda cur: queries.channels(cur, limit=limit, offset=offset),
                     rows="items", item=models.Channel, report="channels")

    @app.get("/api/channels/{channel}/activity", response_model=models.ChannelActivity, dependencies=guarded,
             tags=["channels"])
    def channel_activity(request: Request, channel: Annotated[str, PathParam(max_length=200)],
                         granularity: Literal["day", "week"] = "day", since: Since = None, until: Until = None,
                         as_format: AsFormat = None):
        """Posts, views, photo share and prices posted per day or ISO week (UTC)."""
        _check_range(since, until)
        return reply(request, as_format, models.ChannelActivity,
                     lambda cur: queries.channel_activity(cur, channel, granularity=granularity, since=since,
                                                          until=until),
                     rows="periods", item=models.ActivityPeriod, report="channel-activity", parts=(channel,))

    @app.get("/api/search/messages", response_model=models.SearchResults, dependencies=guarded,
             tags=["search"])
    def search(request: Request, query: Annotated[str, Query(min_length=1, max_length=500,
                                           description='words (English or Amharic), "a phrase", -excluded')],
               channel: Channel = None, limit: Annotated[int, Query(ge=1, le=100)] = 20,
               cursor: Annotated[str | None, Query(max_length=500)] = None, as_format: AsFormat = None):
        """Posts matching the words, best match first; page with the returned next_cursor."""
        if not query.strip():
            raise ApiError(422, "invalid parameter 'query': it is blank", "query")
        if cursor:
            try:
                queries.decode_cursor(cursor)
            except ValueError as exc:
                raise ApiError(422, f"invalid parameter 'cursor': {exc}", "cursor") from None
        return reply(request, as_format, models.SearchResults,
                     lambda cur: queries.search_messages(cur, query, channel=channel, limit=limit, cursor=cursor),
                     rows="items", item=models.SearchHit, report="search", parts=(query,))

    @app.get("/api/reports/visual-content", response_model=models.VisualContent, dependencies=guarded,
             tags=["reports"])
    def visual_content(request: Request, top_classes: Annotated[int, Query(ge=1, le=80)] = 10,
                       since: Since = None, until: Until = None, as_format: AsFormat = None):
        """Image categories per channel (most visual channels first), the views of posts per image category
        and with or without a photo, and the most detected object classes (CSV and NDJSON: the channels)."""
        _check_range(since, until)
        return reply(request, as_format, models.VisualContent,
                     lambda cur: queries.visual_content(cur, top_classes=top_classes, since=since, until=until),
                     rows="channels", item=models.ChannelVisuals, report="visual-content")

    @app.get("/api/pipeline/status", dependencies=guarded, tags=["ops"])
    def pipeline_status() -> dict:
        """Each asset's last successful run, counts and freshness (the same view as ``medical-etl status``,
        without the server's paths and database address)."""
        from medical_etl.ops.status import pipeline_status as compute

        return status_cache.get(lambda: compute(logs_path=logs_path, lake_path=lake_path, cursor=pool.cursor,
                                                exact_counts=False, public=True))

    # --- the dashboard -----------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def dashboard():
        return FileResponse(DASHBOARD, media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    def docs():
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs",
                                   swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
                                   swagger_css_url="/static/swagger-ui/swagger-ui.css", swagger_favicon_url="data:,")

    @app.get("/static/{name:path}", include_in_schema=False)
    def static(name: str):
        if name not in STATIC_FILES:
            raise ApiError(404, f"no such file: {name}")
        path = Path(__file__).with_name(name) if name == "dashboard.js" else STATIC / name
        return FileResponse(path, media_type=STATIC_FILES[name], headers={"Cache-Control": "public, max-age=3600"})

    return app
