"""Delivery channels: a generic webhook (JSON POST), a Telegram bot message, a dead-man's-switch ping.

The channels are sent to at once, each within its own time (``timeout_s`` for each of its
``retries`` attempts, at most :data:`DELIVERY_CAP_S` in all): a channel that answers slowly fails
at its deadline and does not hold the others. A failure is returned as a result, never raised.
"""
from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, stop_after_delay, wait_exponential

from medical_etl.monitor.rules import SEVERITIES
from medical_etl.secrets import mask, register

_VAR = re.compile(r"\$\{([A-Z0-9_]+)\}")
SECRET_FIELDS = {"token"}
DELIVERY_CAP_S = 30.0  # the most one delivery may take, whatever its settings
GRACE_S = 0.5  # an answer that arrives just at the deadline still counts


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


def budget_s(conf: dict) -> float:
    """The whole time one delivery may take, all its attempts together."""
    return min(DELIVERY_CAP_S, float(conf.get("timeout_s", 5)) * int(conf.get("retries", 3)))


def _request(url: str, body: dict | None, timeout: float, retries: int, deadline: float) -> int:
    data = json.dumps(body, default=str).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json", "User-Agent": "medical-etl-monitor"})
    for attempt in Retrying(retry=retry_if_exception_type((urllib.error.URLError, OSError)),
                            stop=stop_after_attempt(max(1, retries)) | stop_after_delay(deadline - time.monotonic()),
                            wait=wait_exponential(multiplier=0.2, max=5), reraise=True):
        with attempt:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("out of time")
            # The socket timeout bounds each read, not the request: the caller bounds the whole.
            with urllib.request.urlopen(req, timeout=min(timeout, left)) as resp:
                return resp.status
    raise AssertionError("unreachable")


def _send(name: str, url: str, body, conf: dict, deadline: float) -> dict:
    try:
        status = _request(url, body, float(conf.get("timeout_s", 5)), int(conf.get("retries", 3)), deadline)
        return {"channel": name, "ok": True, "status": status}
    except Exception as exc:  # noqa: BLE001 - a failed delivery is reported, never fatal
        return {"channel": name, "ok": False, "error": mask(f"{type(exc).__name__}: {exc}")}


def _send_all(sends: list[tuple[str, str, object, dict]]) -> list[dict]:
    """Each ``(channel, url, body, conf)`` in its own thread; one still going at its deadline counts
    as failed (a daemon thread, left to end by itself, so it never holds the process either)."""
    started = []
    for name, url, body, conf in sends:
        box: dict = {}
        deadline = time.monotonic() + budget_s(conf)

        def work(box=box, args=(name, url, body, conf, deadline)):
            box["r"] = _send(*args)

        t = threading.Thread(target=work, name=f"monitor-{name}", daemon=True)
        t.start()
        started.append((name, conf, deadline, t, box))
    results = []
    for name, conf, deadline, t, box in started:
        t.join(max(0.0, deadline - time.monotonic()) + GRACE_S)
        results.append(box.get("r") or {"channel": name, "ok": False,
                                         "error": f"no answer within {budget_s(conf):g} s"})
    return results


def deliver(alerts: list, summary: dict, conf: dict, worst: str | None) -> list[dict]:
    sends = []
    hook = conf.get("webhook") or {}
    if hook.get("url") and alerts:
        sends.append(("webhook", hook["url"], {"alerts": [a.as_dict() for a in alerts],
                                               "worst_severity": worst, "summary": summary}, hook))
    bot = conf.get("telegram_bot") or {}
    min_sev = SEVERITIES.get(bot.get("min_severity", "warning"), 1)
    bot_alerts = [a for a in alerts if SEVERITIES[a.severity] >= min_sev]
    if bot.get("token") and bot.get("chat_id") and bot_alerts:
        text = "\n".join(f"[{a.severity.upper()}] {a.message}" for a in bot_alerts)[:4000]
        base = (bot.get("api_base") or "https://api.telegram.org").rstrip("/")
        sends.append(("telegram_bot", f"{base}/bot{bot['token']}/sendMessage",
                      {"chat_id": bot["chat_id"], "text": f"medical_etl monitor\n{text}"}, bot))
    ping = conf.get("deadman") or {}
    if ping.get("url"):
        failing = worst in ("error", "critical")
        url = (ping.get("fail_url") or ping["url"].rstrip("/") + "/fail") if failing else ping["url"]
        sends.append(("deadman", url, None, ping))
    return _send_all(sends)
