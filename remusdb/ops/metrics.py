"""A node's Prometheus metrics: what each checkpoint measures, plus its status at each scrape.

Distributions (the pause, the epoch's size, the ACK after resume) and running totals (bytes,
epochs, pages, back-pressure) are fed by the primary at every epoch (`EpochObserver`), so they
outlive protection sessions as Prometheus expects of counters; everything else (role, term,
lag, held output, compression, and the session's own counts as `remusdb_session_*` gauges) is
read from the node's status documents when Prometheus scrapes, as `/status` shows them. One
registry per node, never the process-global one: a test may run several.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from remusdb.ops import health

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PAUSE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BYTES_BUCKETS = tuple(float(4096 << (2 * i)) for i in range(10))  # 4 KiB .. 1 GiB, ×4
LABELS = ("vm", "host")


class NodeMetrics:
    """The registry of one node (VM `vm`, config host `host`); an `EpochObserver`."""

    def __init__(self, vm: str, host: str, documents: Callable[[], dict]):
        self.registry = CollectorRegistry(auto_describe=False)
        r, lv = self.registry, (vm, host)
        self._pause = Histogram("remusdb_checkpoint_pause_seconds", "How long the VM was "
                                "paused for each checkpoint", LABELS, registry=r,
                                buckets=PAUSE_BUCKETS).labels(*lv)
        self._size = Histogram("remusdb_epoch_stream_bytes", "QEMU's stream bytes per epoch "
                               "(before compression)", LABELS, registry=r,
                               buckets=BYTES_BUCKETS).labels(*lv)
        self._ack = Histogram("remusdb_ack_after_resume_seconds", "From the VM's resume to "
                              "the standby's ACK of that epoch (how long held output waits "
                              "beyond the pause)", LABELS, registry=r,
                              buckets=PAUSE_BUCKETS).labels(*lv)
        self._sent = Counter("remusdb_sent_bytes", "Bytes sent to the standby for epochs "
                             "after the full copy", LABELS, registry=r).labels(*lv)
        self._epochs = Counter("remusdb_epochs", "Checkpoints sent after the full copy",
                               LABELS, registry=r).labels(*lv)
        self._pages = Counter("remusdb_dirty_pages", "Dirty pages sent", LABELS,
                              registry=r).labels(*lv)
        self._waited = Counter("remusdb_backpressure_wait_seconds", "Time the VM stayed "
                               "paused because the send queue was full", LABELS,
                               registry=r).labels(*lv)
        r.register(_StatusCollector(vm, host, documents))

    # EpochObserver
    def captured(self, pause_ms: float, pages: int, stream_bytes: int) -> None:
        self._pause.observe(pause_ms / 1000)
        self._size.observe(stream_bytes)

    def sent(self, pages: int, nbytes: int) -> None:
        self._sent.inc(nbytes)
        self._epochs.inc()
        self._pages.inc(pages)

    def acked(self, ack_ms: float) -> None:
        self._ack.observe(ack_ms / 1000)

    def waited(self, seconds: float) -> None:
        self._waited.inc(seconds)

    def text(self) -> bytes:
        """The exposition for `GET /metrics`."""
        return generate_latest(self.registry)


class _StatusCollector(Collector):
    def __init__(self, vm: str, host: str, documents: Callable[[], dict]):
        self.labels, self.documents = [vm, host], documents

    def _gauge(self, name: str, doc: str, value: object) -> Iterator[Metric]:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            g = GaugeMetricFamily(name, doc, labels=LABELS)
            g.add_metric(self.labels, float(value))
            yield g

    def collect(self) -> Iterator[Metric]:
        docs = self.documents()
        s = health.summary(docs, time.time())
        role = s["role"]
        g = GaugeMetricFamily("remusdb_node_state", "1 for the node's current state",
                              labels=[*LABELS, "state", "role"])
        g.add_metric([*self.labels, s.get("state") or "none", role], 1.0)
        yield g
        yield from self._gauge("remusdb_runs_vm", "1 where this host runs the VM",
                               float(role == "primary"))
        yield from self._gauge("remusdb_protected", "1 where this host runs the VM protected",
                               float(s.get("state") == health.PROTECTED))
        yield from self._gauge("remusdb_term", "The node's term (+1 at each take-over)",
                               s.get("term"))
        yield from self._gauge("remusdb_epoch", "The newest epoch acknowledged (primary) or "
                               "committed (standby)", s.get("epoch"))
        yield from self._gauge("remusdb_lag_epochs", "Epochs captured and not yet "
                               "acknowledged", s.get("lag_epochs"))
        yield from self._gauge("remusdb_checkpoint_age_seconds", "Age of the newest "
                               "acknowledged (primary) or committed (standby) checkpoint",
                               s.get("checkpoint_age_s"))
        yield from self._gauge("remusdb_interval_seconds", "The checkpoint interval in force",
                               (s.get("interval_ms") or 0) / 1000 if s.get("interval_ms")
                               else None)
        yield from self._gauge("remusdb_output_held_frames", "Guest frames held until their "
                               "epoch is acknowledged", s.get("output_held"))
        yield from self._gauge("remusdb_compression_ratio", "Bytes sent per raw page byte "
                               "this session (lower is better)", s.get("compression_ratio"))
        prim = docs.get("primary") if role == "primary" else None
        if prim:
            yield from self._session_counters(prim)

    def _session_counters(self, prim: dict) -> Iterator[Metric]:
        """Counts the protection session keeps: they start again at 0 with each session, so
        they are gauges (`_session`), not counters."""
        yield from self._gauge("remusdb_session_rt_references", "Dirty pages sent as "
                               "references to disk blocks (read tracking), this session",
                               (prim.get("read_tracking") or {}).get("references"))
        net = prim.get("net") or {}
        frames = GaugeMetricFamily("remusdb_session_net_frames", "Guest frames by what the "
                                   "relay did with them, this session", labels=[*LABELS, "how"])
        for how in ("unprotected", "held", "released", "to_guest"):
            if isinstance(net.get(how), int):
                frames.add_metric([*self.labels, how], net[how])
        yield frames
