"""``medical-etl serve``: the API under uvicorn, with the pipeline's database settings."""
from __future__ import annotations

import logging
import sys

from medical_etl.api.settings import load_api_settings
from medical_etl.config import ConfigError, Settings
from medical_etl.db import conn_params

log = logging.getLogger(__name__)


def serve(settings: Settings, *, host: str | None = None, port: int | None = None, access_log: bool = True,
          env=None) -> int:
    """Run until interrupted. Refuses (exit 2) to bind a non-loopback address without API_KEYS."""
    import uvicorn

    from medical_etl.api.app import create_app

    try:
        api = load_api_settings(env, host=host, port=port)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if not api.loopback and not api.keys:
        print(f"refusing to serve on {api.host}: a non-loopback address needs API_KEYS "
              "(comma-separated bearer keys of at least 16 characters)", file=sys.stderr)
        return 2
    params = conn_params(settings)  # starts the embedded server when DB_HOST is empty
    app = create_app(params, logs_path=settings.logs_path, lake_path=settings.raw_data_path, api=api)
    log.info("serving the API on http://%s:%d (%s, %d key(s), CORS %s)", api.host, api.port,
             "embedded database" if settings.embedded else f"{params.host}:{params.port}/{params.dbname}",
             len(api.keys), ",".join(api.cors_origins) or "off")
    uvicorn.run(app, host=api.host, port=api.port, access_log=access_log, log_level="info",
                server_header=False, proxy_headers=False)
    return 0
