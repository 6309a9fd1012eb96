"""The metric names a Grafana dashboard's PromQL queries read, and the series names a
`/metrics` scrape exports, so that a test can say every query names something real.

Not a PromQL parser: a tokenizer that is enough for the queries a dashboard holds. What it
drops before reading names: quoted strings (a label value may look like a metric), label
matchers `{…}` (but for a `__name__="…"`), range and subquery brackets `[…]`, Grafana's
`$variables`, the label lists of `by / without / on / ignoring / group_left / group_right (…)`,
and numbers. What is left and is
not a function call (a name followed by `(`), an aggregation keyword or an operator word, is a
metric name. `label_values(metric, label)` of a template variable names its first argument.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_VARIABLE = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*(?::[A-Za-z_]+)?\}?")
_LABEL_LIST = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"([A-Za-z_:][A-Za-z0-9_:]*)"')
_LABEL_VALUES = re.compile(r"\blabel_values\s*\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,")
_NAME = re.compile(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")
_WORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "atan2"}
)


def metric_names(expr: str) -> set[str]:
    """Metric names in one PromQL expression (or a `label_values(...)` variable query)."""
    named = set(_LABEL_VALUES.findall(expr))
    if named:
        return named
    named = set(_NAME_MATCHER.findall(expr))  # {__name__="…"}: the one name a string gives
    text = _STRING.sub(" ", expr)
    text = _VARIABLE.sub(" ", text)
    while _MATCHERS.search(text):
        text = _MATCHERS.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    return named | {
        name
        for name, call in _NAME.findall(text)
        if not call and name.lower() not in _WORDS and not re.fullmatch(r"\d.*", name)
    }


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, query) for every panel target (rows' nested panels too) and every template
    variable of type `query`."""

    def panels(items: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            yield f"variable {variable.get('name')!r}", text


_SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gauge": ("",),
    "unknown": ("",),
}


def exported_series(exposition: str) -> set[str]:
    """Every series name a query may use of this `/metrics` text: a family is exported (its
    `# TYPE` line) even before a labelled child has a sample, as a counter's `_total`, a
    histogram's `_bucket` / `_sum` / `_count`, an info's `_info`, a gauge's own name."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in _SERIES_SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names
