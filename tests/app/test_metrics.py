"""Metrics: one registry, every series named sipushd_*, rendered for /metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from sipushd import metrics


def families() -> dict[str, object]:
    text = metrics.render().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_every_own_metric_is_named_sipushd() -> None:
    own = [name for name in families() if not name.startswith(("process_", "python_"))]
    assert own and all(name.startswith("sipushd_") for name in own)


def test_updates_show_up_in_render() -> None:
    metrics.PUSHES.labels(provider="apns", type="voip", result="ok").inc()
    metrics.BINDINGS.labels(with_push=metrics.bool_label(True), provider="fcm").set(7)
    metrics.WAKEUP_LATENCY.labels(provider="apns").observe(2.5)
    text = metrics.render().decode()
    assert 'sipushd_pushes_total{provider="apns",result="ok",type="voip"}' in text
    assert 'sipushd_bindings{provider="fcm",with_push="true"} 7.0' in text
    assert 'sipushd_wakeup_latency_seconds_bucket{le="3.0",provider="apns"}' in text
    assert "_created" not in text
    assert metrics.CONTENT_TYPE.startswith("text/plain")


def test_status_class_keeps_label_values_few() -> None:
    assert metrics.status_class(200) == "200"
    assert metrics.status_class(423) == "423"
    assert metrics.status_class(420) == "4xx"
    assert {metrics.status_class(code) for code in range(100, 700)} <= {
        "1xx", "2xx", "3xx", "4xx", "5xx", "6xx",
        "200", "401", "403", "407", "423", "480", "486", "487", "500", "503", "555",
    }  # fmt: skip
