"""The Prometheus metrics of sipushd, all in one place and one registry.

Definitions only: the runtime, push dispatcher, transports and app update
them; the admin server serves `render()` at /metrics. Every name starts
with `sipushd_`; label values are small fixed sets (never a user, token or
address) so the number of series stays bounded. A dedicated
`CollectorRegistry` keeps tests and embedded use independent of the
process-wide default registry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from sipushd import __version__

__all__ = [
    "ACTIVE_TRANSACTIONS",
    "AUTH_FAILURES",
    "BINDINGS",
    "BUILD_INFO",
    "CONNECTIONS",
    "CONTENT_TYPE",
    "DEAD_TOKENS_REMOVED",
    "HELD_REQUESTS",
    "MESSAGE_DELIVERIES",
    "PARSE_ERRORS",
    "PUSHES",
    "PUSH_LATENCY",
    "REGISTER_RESULTS",
    "REGISTRY",
    "STORED_MESSAGES",
    "TRANSACTIONS",
    "TRANSACTION_KINDS",
    "WAKEUPS",
    "WAKEUP_LATENCY",
    "Tally",
    "bool_label",
    "render",
    "status_class",
]

# `*_created` series double the series count and nothing here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Tally:
    """A labelled counter or gauge kept as plain integers, read by the registry at scrape time.

    For counts taken on every SIP message: `Counter.inc()` takes a lock and walks
    three calls per update, `tally.counts[label] += 1` is one dictionary update on
    the event loop thread. Registered as a custom collector (prometheus_client's
    `collect()` protocol), so the exposition is that of a Counter or Gauge.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        *,
        gauge: bool = False,
        initial: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.gauge = gauge
        # Series in `initial` are exposed at 0 before their first count.
        self.counts: dict[str, int] = dict.fromkeys(initial, 0)
        REGISTRY.register(self)

    def add(self, value: str, amount: int = 1) -> None:
        """Add `amount` to the series labelled `value` (negative for a gauge going down)."""
        counts = self.counts
        counts[value] = counts.get(value, 0) + amount

    def collect(self) -> Iterator[Metric]:
        """The prometheus_client collector protocol."""
        family: Metric
        if self.gauge:
            family = GaugeMetricFamily(self.name, self.documentation, labels=[self.label])
        else:
            family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, count in sorted(self.counts.items()):
            family.add_metric([value], count)
        yield family


# Phones wake in about 1-10 s; pushes to APNs/FCM take milliseconds to seconds.
_WAKEUP_BUCKETS = (0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 90.0)
_PUSH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

BUILD_INFO = Info("sipushd_build", "Version of the running sipushd", registry=REGISTRY)
BUILD_INFO.info({"version": __version__})

# --- registrar ----------------------------------------------------------------------------
BINDINGS = Gauge(
    "sipushd_bindings",
    "Active registrations (contacts); provider is apns, fcm, webpush or none",
    ["with_push", "provider"],
    registry=REGISTRY,
)
REGISTER_RESULTS = Tally(
    "sipushd_register_results", "Final responses to REGISTER, by status code", "status"
)
AUTH_FAILURES = Counter(
    "sipushd_auth_failures",
    "Digest authentication failures (reason: bad_password, unknown_user, stale, replay, "
    "bad_nonce, invalid, blocked)",
    ["reason"],
    registry=REGISTRY,
)

# --- push and wake-up ---------------------------------------------------------------------
HELD_REQUESTS = Gauge(
    "sipushd_held_requests",
    "Requests held while a phone wakes up (RFC 8599 §5.6.2)",
    ["method"],
    registry=REGISTRY,
)
WAKEUPS = Counter(
    "sipushd_wakeups",
    "Held requests forwarded after the pushed device registered",
    ["provider"],
    registry=REGISTRY,
)
WAKEUP_LATENCY = Histogram(
    "sipushd_wakeup_latency_seconds",
    "Time from sending a push to the device's REGISTER",
    ["provider"],
    buckets=_WAKEUP_BUCKETS,
    registry=REGISTRY,
)
PUSHES = Counter(
    "sipushd_pushes",
    "Pushes sent (type: voip, alert, background, data; result: delivered, dead_token, failed)",
    ["provider", "type", "result"],
    registry=REGISTRY,
)
PUSH_LATENCY = Histogram(
    "sipushd_push_latency_seconds",
    "Time for the push provider to answer one push",
    ["provider"],
    buckets=_PUSH_BUCKETS,
    registry=REGISTRY,
)
DEAD_TOKENS_REMOVED = Counter(
    "sipushd_dead_tokens_removed",
    "Bindings removed because the provider said the token is dead (APNs 410, FCM UNREGISTERED)",
    ["provider"],
    registry=REGISTRY,
)

# --- stored messages ----------------------------------------------------------------------
STORED_MESSAGES = Gauge(
    "sipushd_stored_messages",
    "MESSAGE requests stored for offline devices",
    registry=REGISTRY,
)
MESSAGE_DELIVERIES = Counter(
    "sipushd_message_deliveries",
    "Stored MESSAGEs leaving the store (result: delivered, expired, failed, rejected)",
    ["result"],
    registry=REGISTRY,
)

# --- SIP transactions and transports ------------------------------------------------------
TRANSACTION_KINDS = ("invite_server", "invite_client", "non_invite_server", "non_invite_client")
TRANSACTIONS = Tally(
    "sipushd_transactions",
    "Transactions created (kind: invite_server, invite_client, non_invite_server, "
    "non_invite_client; RFC 3261 §17)",
    "kind",
    initial=TRANSACTION_KINDS,
)
ACTIVE_TRANSACTIONS = Tally(
    "sipushd_transactions_active",
    "Transactions currently alive, by kind",
    "kind",
    gauge=True,
    initial=TRANSACTION_KINDS,
)
CONNECTIONS = Gauge(
    "sipushd_connections",
    "Open stream connections, by transport (tcp, tls)",
    ["transport"],
    registry=REGISTRY,
)
PARSE_ERRORS = Counter(
    "sipushd_parse_errors",
    "Malformed SIP messages received, by transport",
    ["transport"],
    registry=REGISTRY,
)


def bool_label(value: bool) -> str:
    """Prometheus label value for a flag: "true" or "false"."""
    return "true" if value else "false"


def status_class(status: int) -> str:
    """Label for a SIP status: the exact code for common ones, else "2xx"/"4xx"/..."""
    if status in (200, 401, 403, 407, 423, 480, 486, 487, 500, 503, 555):
        return str(status)
    return f"{status // 100}xx"


def render() -> bytes:
    """The text exposition of every metric, for GET /metrics (`CONTENT_TYPE`)."""
    return generate_latest(REGISTRY)
