"""
Prometheus metrics of one server, counted from the tracker's event hooks
and served at C{GET /metrics} on the Ajax site.

Every server owns its L{CollectorRegistry}: two servers in one process (as
in the tests) never share or double-register a metric, and nothing here
touches the process-global registry. The hooks run on the hot paths (one
call per fan-out, per direct message, per incoming message), so label
children are resolved once and cached, and every label takes a bounded set
of values: unknown message types count as C{other}, unusual close codes as
C{other}.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.web.resource import Resource
from twisted.web.server import Request

from appserver._core.client import Client
from appserver._core.envelope import Outgoing
from appserver._core.events import TrackerEvents
from appserver._core.streamlog import GLOBAL_STREAM

if TYPE_CHECKING:
    from appserver._server.runtime import Runtime

__all__ = ["MetricsEvents", "MetricsResource", "BUILTIN_MESSAGE_TYPES", "KNOWN_CLOSE_CODES", "OTHER"]

#: The label value of anything outside a label's known set.
OTHER = "other"

#: Message types the dispatcher handles itself (docs/protocol.md); the
#: application's handler names are added when the metrics are bound.
BUILTIN_MESSAGE_TYPES = frozenset({"subscribe", "unsubscribe", "publish", "join", "leave", "members",
                                   "resume", "ping"})

#: Close codes with their own label value; a client may close with any code
#: from 1000 to 4999, and each would otherwise become a time series.
KNOWN_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011,
                               4000, 4001})

#: A connection that ended without a close frame (dropped, aborted).
ABNORMAL_CLOSE = 1006

_FANOUT_BUCKETS = (0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000)
_DELIVERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                     5.0, 10.0, 30.0, 60.0)


class _Children:
    """
    A labelled metric's children by label value, created on first use: a
    dict lookup on the hot path instead of C{metric.labels(...)}.
    """

    __slots__ = ("metric", "children")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self.children: dict[Any, Any] = {}

    def __getitem__(self, key: Any) -> Any:
        child = self.children.get(key)
        if child is None:
            labels = key if isinstance(key, tuple) else (key,)
            child = self.children[key] = self.metric.labels(*labels)
        return child


class MetricsEvents(TrackerEvents):
    """
    Counts what the tracker and the transports report.

    Build it, pass it to L{appserver._server.runtime.build_runtime} as C{events},
    then L{bind} it to the runtime for the values read at scrape time
    (sessions, channels, readiness) and the tracker's clock.

    @ivar registry: where every metric of this server is registered.
    """

    def __init__(self, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time,
                 known_types: Iterable[str] = (), process_metrics: bool = False) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.clock = clock
        self.known_types = frozenset(known_types) | BUILTIN_MESSAGE_TYPES
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        r = self.registry
        self.clients = _Children(Gauge(
            "appserver_clients", "Connected clients (WebSocket connections, Ajax sessions, event streams).",
            ["transport"], registry=r))
        self.opened = _Children(Counter(
            "appserver_connections_opened", "Clients registered (after handshake, origin and auth checks).",
            ["transport"], registry=r))
        self.closed_total = _Children(Counter(
            "appserver_connections_closed", "Clients gone, by close code (1006: dropped without a close).",
            ["transport", "code"], registry=r))
        self.received = _Children(Counter(
            "appserver_messages_received", "Valid envelopes received, by type (unknown types: other).",
            ["type"], registry=r))
        self.sent_messages = _Children(Counter(
            "appserver_messages_sent", "Messages handed to clients (written or queued), one per recipient.",
            ["kind"], registry=r))
        self.sent_bytes = _Children(Counter(
            "appserver_sent_bytes", "Payload bytes handed to clients (JSON, without framing), all recipients.",
            ["kind"], registry=r))
        self.fanout_size = Histogram(
            "appserver_fanout_recipients", "Recipients of each broadcast or channel publication.",
            buckets=_FANOUT_BUCKETS, registry=r)
        self.delivery = _Children(Histogram(
            "appserver_delivery_seconds",
            "Seconds from publication to hand-over: stage=fanout when written to (or queued for) every "
            "recipient, stage=poll when a long-poll answer carries it.",
            ["stage"], buckets=_DELIVERY_BUCKETS, registry=r))
        self.dropped = _Children(Counter(
            "appserver_queue_dropped", "Messages dropped from full client queues (drop-oldest policy).",
            ["transport"], registry=r))
        self.conflated = _Children(Counter(
            "appserver_queue_conflated", "Queued messages replaced by a newer one with the same key.",
            ["transport"], registry=r))
        self.slow_consumers = _Children(Counter(
            "appserver_slow_consumer_disconnects", "Clients closed (4000) because their queue overflowed.",
            ["transport"], registry=r))
        self.recoveries = _Children(Counter(
            "appserver_recoveries", "Resume requests: result=ok when every missed message was replayed.",
            ["result"], registry=r))
        self.handler_errors = _Children(Counter(
            "appserver_handler_errors", "Application handlers that raised, by message type.",
            ["type"], registry=r))
        self.sessions = Gauge("appserver_longpoll_sessions", "Open Ajax (long-poll) sessions.", registry=r)
        self.waiting_polls = Gauge("appserver_longpoll_waiting", "Long polls held open, waiting for messages.",
                                   registry=r)
        self.backplane_seconds = _Children(Histogram(
            "appserver_backplane_seconds", "Round trip of backplane (Redis) operations, by operation.",
            ["operation"], registry=r))
        self.backplane_errors = _Children(Counter(
            "appserver_backplane_errors",
            "Backplane (Redis) failures, by operation; 'connection' counts lost connections.",
            ["operation"], registry=r))
        self.channels = Gauge("appserver_channels", "Channels with at least one subscriber.", registry=r)
        self.accepting = Gauge("appserver_accepting", "1 while new clients are accepted, 0 during shutdown.",
                               registry=r)
        self.history_bytes = Gauge(
            "appserver_history_bytes",
            "Bytes the recovery histories of all streams retain (messages and their overhead); "
            "at most --history-bytes.", registry=r)
        self.history_limit = Gauge(
            "appserver_history_limit_bytes", "The total history budget, --history-bytes (0: no limit).", registry=r)
        self.opening = Gauge(
            "appserver_connections_opening",
            "Connections whose HTTP request or WebSocket upgrade has not fully arrived; they count against "
            "--max-connections-per-ip.", registry=r)
        # Series that exist from the start, at zero, so rates and alerts
        # work before the first event.
        for transport in ("websocket", "ajax", "sse"):
            self.clients[transport].inc(0)
            self.opened[transport].inc(0)
        for result in ("ok", "failed"):
            self.recoveries[result].inc(0)
        for kind in ("broadcast", "channel", "direct"):
            self.sent_messages[kind].inc(0)
            self.sent_bytes[kind].inc(0)

    def bind(self, runtime: "Runtime") -> "MetricsEvents":
        """
        Read the values only the runtime knows, use the tracker's clock (the
        one that stamps L{Outgoing.created}) and become C{runtime.metrics}.
        """
        self.clock = runtime.tracker.clock
        self.known_types = self.known_types | frozenset(runtime.app.handlers)
        self.sessions.set_function(lambda: len(runtime.sessions) if runtime.sessions is not None else 0)
        self.waiting_polls.set_function(lambda: _waiting_polls(runtime))
        self.channels.set_function(lambda: len(runtime.tracker.channels))
        self.accepting.set_function(lambda: 1 if runtime.accepting else 0)
        self.history_bytes.set_function(lambda: runtime.tracker.stream.budget.used)
        self.history_limit.set_function(lambda: runtime.tracker.stream.budget.limit)
        self.opening.set_function(lambda: runtime.limiter.opening)
        self.registry.register(_HistoryEvictions(runtime))
        runtime.metrics = self
        return self

    def _type_label(self, message_type: str) -> str:
        return message_type if message_type in self.known_types else OTHER

    # Hooks --------------------------------------------------------------

    def registered(self, client: Client) -> None:
        self.clients[client.transport].inc()
        self.opened[client.transport].inc()

    def unregistered(self, client: Client) -> None:
        self.clients[client.transport].dec()

    def closed(self, client: Client, code: int | None) -> None:
        if code is None:
            code = ABNORMAL_CLOSE
        label = str(code) if code in KNOWN_CLOSE_CODES else OTHER
        self.closed_total[(client.transport, label)].inc()

    def message_in(self, client: Client, message_type: str) -> None:
        self.received[self._type_label(message_type)].inc()

    def handler_error(self, message_type: str) -> None:
        self.handler_errors[self._type_label(message_type)].inc()

    def fanout(self, stream: str, recipients: int, message: Outgoing) -> None:
        kind = "broadcast" if stream == GLOBAL_STREAM else "channel"
        self.sent_messages[kind].inc(recipients)
        self.sent_bytes[kind].inc(recipients * len(message))
        self.fanout_size.observe(recipients)
        if message.created:
            self.delivery["fanout"].observe(max(0.0, self.clock() - message.created))

    def sent(self, recipients: int, message: Outgoing) -> None:
        self.sent_messages["direct"].inc(recipients)
        self.sent_bytes["direct"].inc(recipients * len(message))

    def delivered(self, client: Client, messages: Iterable[Outgoing]) -> None:
        now = self.clock()
        histogram = self.delivery["poll"]
        for message in messages:
            if message.created:
                histogram.observe(max(0.0, now - message.created))

    def queue_discarded(self, client: Client, dropped: int, conflated: int) -> None:
        if dropped:
            self.dropped[client.transport].inc(dropped)
        if conflated:
            self.conflated[client.transport].inc(conflated)

    def slow_consumer(self, client: Client, detail: str) -> None:
        self.slow_consumers[client.transport].inc()

    def backplane_latency(self, operation: str, seconds: float) -> None:
        self.backplane_seconds[operation].observe(seconds)

    def backplane_error(self, operation: str) -> None:
        self.backplane_errors[operation].inc()

    def recovery(self, client: Client, recovered: bool) -> None:
        self.recoveries["ok" if recovered else "failed"].inc()


class _HistoryEvictions:
    """
    C{appserver_history_evicted_total}, read from the stream log's budget at
    scrape time: the stream log is a value below the metrics and counts its
    evictions itself.
    """

    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "appserver_history_evicted",
            "Messages evicted from the recovery histories, oldest first across all streams, to stay within "
            "--history-bytes (the per-stream --history-size and --history-age drops are not counted).",
            value=self.runtime.tracker.stream.budget.evicted)


def _waiting_polls(runtime: "Runtime") -> int:
    sessions = runtime.sessions
    if sessions is None:
        return 0
    return sum(1 for session in list(sessions.sessions.values()) if session.waiting is not None)


class MetricsResource(Resource):
    """
    C{GET /metrics}: the runtime's registry in the Prometheus text format,
    or OpenMetrics when the scraper asks for it. Rendered synchronously:
    collecting is a walk over in-memory values (and C{/proc} for the process
    metrics), no thread pool needed.
    """

    isLeaf = True

    def __init__(self, runtime: "Runtime") -> None:
        super().__init__()
        self.runtime = runtime

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Cache-Control", b"no-store")
        metrics = self.runtime.metrics
        if metrics is None:
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"metrics are not enabled on this server\n"
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        body = encoder(metrics.registry)
        request.setHeader(b"Content-Type", content_type.encode("latin-1"))
        return body
