"""Delivery channels: a generic webhook (JSON POST), a Telegram bot message, a dead-man's-switch ping.

Each call has a timeout and bounded retries; a failure is returned as a result, never raised.
"""
from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from medical_etl.monitoring.rules import SEVERITIES
from medical_etl.secrets import mask, register

_VAR = re.compile(r"\$\{([A-Z0-9_]+)\}")
SECRET_FIELDS = {"token"}


def expand(conf: dict, env: Mapping[str, str] | None = None) -> dict:
    """Replace ``${VAR}`` with the environment's value (empty when unset); register secret fields."""
    env = os.environ if env is None else env
    out = {}
    for channel, fields in conf.items():
        out[channel] = {}
        for k, v in fields.items():
            if isinstance(v, str):
                v = _VAR.sub(lambda m: env.get(m.group(1), ""), v)
                if k in SECRET_FIELDS:
                    register(v)
            out[channel][k] = v
    return out


def _request(url: str, body: dict | None, timeout: float, retries: int) -> int:
    data = json.dumps(body, default=str).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json", "User-Agent": "medical-etl-monitor"})
    for attempt in Retrying(retry=retry_if_exception_type((urllib.error.URLError, OSError)),
                            stop=stop_after_attempt(max(1, retries)), wait=wait_exponential(multiplier=0.2, max=5),
                            reraise=True):
        with attempt:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status
    raise AssertionError("unreachable")


def _send(name: str, url: str, body, conf: dict) -> dict:
    try:
        status = _request(url, body, float(conf.get("timeout_s", 5)), int(conf.get("retries", 3)))
        return {"channel": name, "ok": True, "status": status}
    except Exception as exc:  # noqa: BLE001 - a failed delivery is reported, never fatal
        return {"channel": name, "ok": False, "error": mask(f"{type(exc).__name__}: {exc}")}


def deliver(alerts: list, summary: dict, conf: dict, worst: str | None) -> list[dict]:
    results = []
    hook = conf.get("webhook") or {}
    if hook.get("url") and alerts:
        results.append(_send("webhook", hook["url"], {"alerts": [a.as_dict() for a in alerts],
                                                      "worst_severity": worst, "summary": summary}, hook))
    bot = conf.get("telegram_bot") or {}
    min_sev = SEVERITIES.get(bot.get("min_severity", "warning"), 1)
    bot_alerts = [a for a in alerts if SEVERITIES[a.severity] >= min_sev]
    if bot.get("token") and bot.get("chat_id") and bot_alerts:
        text = "\n".join(f"[{a.severity.upper()}] {a.message}" for a in bot_alerts)[:4000]
        base = (bot.get("api_base") or "https://api.telegram.org").rstrip("/")
        results.append(_send("telegram_bot", f"{base}/bot{bot['token']}/sendMessage",
                             {"chat_id": bot["chat_id"], "text": f"medical_etl monitor\n{text}"}, bot))
    ping = conf.get("deadman") or {}
    if ping.get("url"):
        failing = worst in ("error", "critical")
        url = (ping.get("fail_url") or ping["url"].rstrip("/") + "/fail") if failing else ping["url"]
        results.append(_send("deadman", url, None, ping))
    return results
