"""The dashboard check's reading of PromQL: names found, and nothing else taken for one."""

from __future__ import annotations

import pytest

from tests.support.promql import dashboard_queries, exported_series, metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        (
            "histogram_quantile(0.99, sum by (le) (rate("
            'coupon_worker_batch_duration_seconds_bucket{instance=~"$instance"}'
            "[$__rate_interval])))",
            {"coupon_worker_batch_duration_seconds_bucket"},
        ),
        (
            "sum(rate(a_sum[5m])) / sum(rate(a_count[5m] offset 1h)) > bool 0.5",
            {"a_sum", "a_count"},
        ),
        # A label value or a label list that looks like a metric is not one.
        ('sum by (coupon_worker_x) (b_total{job="coupon_worker_y", k!~"z:1"})', {"b_total"}),
        ("min by (instance) (x * on (instance) group_left (version) y_info)", {"x", "y_info"}),
        ("absent(up == 1) or sum(c) == 0 unless d", {"up", "c", "d"}),
        ("max_over_time(e[1h:5m]) + 1e3 - Inf", {"e"}),
        ("label_values(coupon_worker_build_info, instance)", {"coupon_worker_build_info"}),
        ('{__name__="by_matcher", job="j"} + count({__name__ = "other"})', {"by_matcher", "other"}),
    ],
)
def test_metric_names_of_an_expression(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_every_target_and_query_variable_is_read() -> None:
    dashboard = {
        "panels": [
            {
                "title": "row",
                "panels": [{"title": "nested", "targets": [{"refId": "A", "expr": "x"}]}],
            },
            {"title": "top", "targets": [{"refId": "A", "expr": "y"}, {"refId": "B"}]},
        ],
        "templating": {
            "list": [
                {"name": "ds", "type": "datasource", "query": "prometheus"},
                {"name": "i", "type": "query", "query": {"query": "label_values(z, instance)"}},
            ]
        },
    }
    assert [q for _, q in dashboard_queries(dashboard)] == ["x", "y", "label_values(z, instance)"]


def test_exported_series_include_suffixes_of_families_without_samples() -> None:
    exposition = "\n".join(
        [
            "# HELP c_total A counter with labels and no child yet",
            "# TYPE c_total counter",
            "# HELP h_seconds A histogram",
            "# TYPE h_seconds histogram",
            'h_seconds_bucket{le="+Inf"} 0.0',
            "h_seconds_count 0.0",
            "h_seconds_sum 0.0",
            "# HELP g A gauge",
            "# TYPE g gauge",
            "g 1.0",
            "",
        ]
    )
    series = exported_series(exposition)
    assert {"c_total", "h_seconds_bucket", "h_seconds_sum", "h_seconds_count", "g"} <= series
    assert "c" not in series and "h_seconds" not in series and "g_total" not in series
