"""Alert rules (``monitor/pipeline_alerts.json``): loaded and validated before anything is evaluated."""
from __future__ import annotations

import json
import math
import operator
import re
import string
from dataclasses import dataclass
from pathlib import Path

from medical_etl.errors import PermanentError

COMPARISONS = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le, "eq": operator.eq}
SEVERITIES = {"info": 0, "warning": 1, "error": 2, "critical": 3}
RULE_KEYS = {"alert_type", "metric", "threshold", "comparison", "window", "job", "stage",
             "message_template", "severity", "description"}
REQUIRED = {"alert_type", "metric", "threshold", "comparison", "message_template", "severity"}
DELIVERY_KEYS = {"webhook": {"url", "timeout_s", "retries"},
                 "telegram_bot": {"token", "chat_id", "api_base", "timeout_s", "retries", "min_severity"},
                 "deadman": {"url", "fail_url", "timeout_s", "retries"}}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(m|h|d)")


class RulesError(PermanentError, ValueError):
    """The alert rules file cannot be used (the message names the rule)."""


@dataclass(frozen=True)
class Window:
    runs: int | None = None
    seconds: float | None = None

    def __str__(self) -> str:
        return f"{self.runs} runs" if self.runs else f"{self.seconds / 3600:g} h"


@dataclass(frozen=True)
class Rule:
    name: str
    alert_type: str
    metric: str
    threshold: float
    comparison: str
    window: Window
    message_template: str
    severity: str
    job: str | None = None
    stage: str | None = None
    description: str = ""

    def compare(self, value: float) -> bool:
        return COMPARISONS[self.comparison](value, self.threshold)


def parse_window(raw, name: str) -> Window:
    if raw is None:
        return Window(runs=10)
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return Window(runs=raw)
    if isinstance(raw, str) and (m := _DURATION.fullmatch(raw.strip())):
        return Window(seconds=float(m.group(1)) * {"m": 60, "h": 3600, "d": 86400}[m.group(2)])
    raise RulesError(f"rule {name}: window must be a number of runs or a duration like '24h', got {raw!r}")


def check_template(template, name: str, fields: set[str] | None) -> str:
    """A message template holds text and ``{field}`` places only: no attribute or index access,
    no conversions or format specs, every brace balanced, and (when ``fields`` is known) only the
    fields the rule's metric offers."""
    if not isinstance(template, str) or not template.strip():
        raise RulesError(f"rule {name}: message_template must be a non-empty string")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise RulesError(f"rule {name}: message_template {template!r}: {exc} "
                         "(write {{ and }} for literal braces)") from None
    for _literal, field, spec, conv in parts:
        if field is None:
            continue
        if not field.isidentifier():
            raise RulesError(f"rule {name}: message_template field {{{field}}} is not a plain name "
                             "(attribute and index access are not allowed)")
        if conv or spec:
            raise RulesError(f"rule {name}: message_template field {{{field}}}: conversions and format "
                             "specs are not allowed; write {" + field + "}")
        if fields is not None and field not in fields:
            raise RulesError(f"rule {name}: message_template field {{{field}}} is not offered by this "
                             f"metric; fields: {sorted(fields)}")
    return template


def load_rules(path: str | Path, known_metrics: set[str] | dict[str, set[str] | None]) -> tuple[list[Rule], dict]:
    """Parse and validate the rules file; raise :class:`RulesError` naming the rule at fault.

    ``known_metrics`` names the metrics, or maps each to the template fields it offers."""
    fields_of = known_metrics if isinstance(known_metrics, dict) else dict.fromkeys(known_metrics)
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RulesError(f"{path}: cannot read the rules file: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        raise RulesError(f"{path}: expected an object with a 'rules' list")
    unknown_top = set(doc) - {"rules", "delivery", "description"}
    if unknown_top:
        raise RulesError(f"{path}: unknown top-level keys {sorted(unknown_top)}")
    rules = []
    for i, raw in enumerate(doc["rules"], 1):
        name = f"#{i}"
        if isinstance(raw, dict) and isinstance(raw.get("alert_type"), str):
            name = f"#{i} ({raw['alert_type']})"
        if not isinstance(raw, dict):
            raise RulesError(f"rule {name}: expected an object")
        if unknown := set(raw) - RULE_KEYS:
            raise RulesError(f"rule {name}: unknown keys {sorted(unknown)}")
        if missing := REQUIRED - set(raw):
            raise RulesError(f"rule {name}: missing keys {sorted(missing)}")
        if raw["comparison"] not in COMPARISONS:
            raise RulesError(f"rule {name}: comparison must be one of {sorted(COMPARISONS)}, "
                             f"got {raw['comparison']!r}")
        if raw["severity"] not in SEVERITIES:
            raise RulesError(f"rule {name}: severity must be one of {list(SEVERITIES)}, got {raw['severity']!r}")
        if raw["metric"] not in known_metrics:
            raise RulesError(f"rule {name}: unknown metric {raw['metric']!r}; known: {sorted(known_metrics)}")
        if (isinstance(raw["threshold"], bool) or not isinstance(raw["threshold"], (int, float))
                or not math.isfinite(raw["threshold"])):
            raise RulesError(f"rule {name}: threshold must be a finite number, got {raw['threshold']!r}")
        template = check_template(raw["message_template"], name, fields_of[raw["metric"]])
        rules.append(Rule(name=name, alert_type=raw["alert_type"], metric=raw["metric"],
                          threshold=float(raw["threshold"]), comparison=raw["comparison"],
                          window=parse_window(raw.get("window"), name),
                          message_template=template, severity=raw["severity"],
                          job=raw.get("job"), stage=raw.get("stage"), description=raw.get("description", "")))
    delivery = doc.get("delivery") or {}
    for channel, conf in delivery.items():
        if channel not in DELIVERY_KEYS:
            raise RulesError(f"delivery: unknown channel {channel!r}; known: {sorted(DELIVERY_KEYS)}")
        if unknown := set(conf) - DELIVERY_KEYS[channel]:
            raise RulesError(f"delivery.{channel}: unknown keys {sorted(unknown)}")
        for key, low in (("timeout_s", 0.1), ("retries", 1)):
            v = conf.get(key, low)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < low:
                raise RulesError(f"delivery.{channel}: {key} must be a finite number of at least {low}, got {v!r}")
        if "min_severity" in conf and conf["min_severity"] not in SEVERITIES:
            raise RulesError(f"delivery.{channel}: min_severity must be one of {list(SEVERITIES)}")
    return rules, delivery
