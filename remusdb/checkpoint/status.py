"""Daemon status: a typed document each daemon rewrites atomically, read by `remusdb status`.

The documents write and read themselves (field names are the JSON keys), so readers do not
hard-code key names; a field a newer or older daemon lacks reads as its default.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np

log = logging.getLogger(__name__)

D = TypeVar("D", bound="StatusDoc")


@dataclass
class StatusDoc:
    role: ClassVar[str] = ""
    state: str = ""
    vm: str = ""
    pid: int = 0
    started_at: float = 0.0
    updated_at: float = 0.0

    def to_json(self) -> dict:
        return {"role": self.role, **dataclasses.asdict(self)}

    def headline(self, now: float) -> str:
        return (f"{self.role}: {self.state} (pid {self.pid}, updated "
                f"{now - self.updated_at:.0f} s ago)")

    @classmethod
    def from_json(cls: type[D], d: dict) -> D:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def read(cls: type[D], path: Path) -> D | None:
        d = read_status(path)
        return cls.from_json(d) if d is not None else None

    @classmethod
    def file_name(cls) -> str:
        return f"{cls.role}.status.json"


@dataclass
class PrimaryStatus(StatusDoc):
    role: ClassVar[str] = "primary"
    interval_ms: int = 0
    epoch_captured: int = -1
    epoch_sent: int = -1
    epoch_acked: int = -1
    lag_epochs: int = 0
    pause_ms: dict = field(default_factory=dict)
    # From the VM's resume to the standby's ACK of that epoch: how long held output waits
    # beyond the resume (CP's commit acknowledgements, all of Remus's output; 0 if the ACK
    # came first). Output from epoch k waits from its pause: the pause plus this.
    ack_ms: dict = field(default_factory=dict)
    dirty_pages: dict = field(default_factory=dict)
    bytes_per_epoch: dict = field(default_factory=dict)
    failure: str | None = None
    queue: int = 0
    backpressure: dict = field(default_factory=dict)
    compression: dict = field(default_factory=lambda: {"mode": "off"})
    recordings_done: int = 0
    disk: dict | None = None
    read_tracking: dict = field(default_factory=lambda: {"enabled": False})
    net: dict | None = None
    totals: dict = field(default_factory=dict)
    guest_clock: dict | None = None
    link: str = ""  # tls1.3, or insecure
    acked_at: float = 0.0  # wall time of the newest ACK (0: none yet)

    def lines(self) -> list[str]:
        """What `remusdb status` prints for the primary, after its state line."""
        out = [f"  epoch captured {self.epoch_captured}, acked {self.epoch_acked} "
               f"(lag {self.lag_epochs}), interval {self.interval_ms} ms, link "
               f"{_link(self.link)}",
               f"  pause ms {self.pause_ms}, ACK ms after resume {self.ack_ms}, dirty pages "
               f"{self.dirty_pages}, bytes/epoch {self.bytes_per_epoch}"]
        comp = self.compression
        if comp.get("mode", "off") != "off":
            cache = comp.get("cache", {})
            out.append(f"  compression {comp['mode']}: sent {comp.get('sent_mib')} of "
                       f"{comp.get('raw_mib')} MiB ({comp.get('ratio')}), "
                       f"{comp.get('encode_mb_s')} MB/s; page cache {cache.get('used_pages')}/"
                       f"{cache.get('capacity_pages')} pages, {cache.get('memory_mib')} MiB, "
                       f"hit rate {cache.get('hit_rate')}")
        rt = self.read_tracking
        if rt.get("references") is not None:
            index = rt.get("index", {})
            out.append(f"  read tracking: {rt['references']} pages sent as disk references "
                       f"({rt.get('saved_mib')} MiB), index {index.get('entries')} blocks, "
                       f"{index.get('memory_mib')} MiB")
        if self.disk:
            out.append(f"  disk: {self.disk.get('writes', 0)} writes, "
                       f"{self.disk.get('reads', 0)} reads, writes per epoch "
                       f"{self.disk.get('writes_per_epoch')}")
        out += self._net_lines()
        if self.backpressure.get("waits"):
            out.append(f"  back-pressure: the VM waited {self.backpressure['waits']} times for "
                       f"the link, {self.backpressure.get('waited_ms')} ms in all")
        if self.failure:
            out.append(f"  {self.failure}")
        return out

    def _net_lines(self) -> list[str]:
        net = self.net
        if not net:
            return []
        cp = (f"commit protection on (DSCP {net.get('codepoint')})" if net.get("cp") else
              "commit protection off")
        out = [f"  net: {cp}; out at once {net.get('unprotected')}, held {net.get('held')} "
               f"(+{net.get('queued_behind')} behind their flow), released "
               f"{net.get('released')}, holding {net.get('held_frames')} frames; to guest "
               f"{net.get('to_guest')}"]
        if net.get("error"):
            out.append(f"  net relay stopped: {net['error']} (the VM has no network)")
        return out


def _link(mode: str) -> str:
    return "INSECURE (plain TCP, link.insecure = true)" if mode == "insecure" else mode or "?"


@dataclass
class StandbyStatus(StatusDoc):
    role: ClassVar[str] = "standby"
    epoch_committed: int = -1
    verify: dict = field(default_factory=dict)
    apply_ms: dict = field(default_factory=dict)
    bytes_per_epoch: dict = field(default_factory=dict)
    failover: dict | None = None
    qemu_pid: int | None = None
    guest_clock: dict | None = None
    link: str = ""
    checkpoint_ended: str = ""  # the committed checkpoint is superseded (BYE, released)
    committed_at: float = 0.0  # wall time of the newest commit in this process (0: none)

    def lines(self) -> list[str]:
        """What `remusdb status` prints for the standby, after its state line."""
        out = [f"  epoch committed {self.epoch_committed}, apply ms {self.apply_ms}, "
               f"verify {self.verify}, link {_link(self.link)}"]
        if self.checkpoint_ended:
            out.append(f"  the committed checkpoint is superseded ({self.checkpoint_ended}): "
                       "a failover to it needs --force")
        if self.failover:
            out.append(f"  failover {self.failover}")
        return out


@dataclass
class NodeStatus(StatusDoc):
    """The node daemon: this host's role, its term, the peer, the last sessions' seeding."""

    role: ClassVar[str] = "node"
    host: str = ""
    term: int = 0
    peer: str = ""
    sessions: list = field(default_factory=list)
    witness: dict | None = None  # this host's lease, while it runs the VM (witness on)

    def headline(self, now: float) -> str:
        return (f"node {self.host}: {self.state}, term {self.term} (pid {self.pid}, updated "
                f"{now - self.updated_at:.0f} s ago; peer {self.peer})")

    def lines(self) -> list[str]:
        out = []
        if self.witness:
            w = self.witness
            at = w.get("renewed_at")
            ago = f"{time.time() - at:.1f} s ago" if isinstance(at, (int, float)) else "never"
            out.append(f"  witness lease: {w.get('hold')} (term {w.get('term')}), last renewed "
                       f"{ago}; {w.get('fences')} fences, {w.get('requests')} requests to etcd")
        for s in self.sessions[-1:]:
            seed = s.get("seed", {})
            out.append(f"  last seeding: disk {seed.get('path')} ({seed.get('why')}): "
                       f"{(seed.get('sent_bytes') or 0) / 2**20:.1f} MiB in "
                       f"{seed.get('seconds')} s; {'protected' if s.get('protected') else ''}"
                       f"{s.get('failure') or ''}")
        return out


class StatusFile:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = threading.Lock()
        self.pid, self.started_at = os.getpid(), time.time()
        self.failing = False

    def stamp(self, doc: D) -> D:
        """The writer's pid and times on a document (also one served live, not written)."""
        doc.pid, doc.started_at, doc.updated_at = self.pid, self.started_at, time.time()
        return doc

    def write(self, doc: StatusDoc) -> None:
        """Best effort: a status that cannot be written (a full disk) is logged once, never
        what ends a daemon in the middle of a state change."""
        self.stamp(doc)
        with self.lock:
            tmp = self.path.with_name(self.path.name + ".tmp")
            try:
                tmp.write_text(json.dumps(doc.to_json(), indent=1, default=str))
                os.replace(tmp, self.path)
            except OSError as e:
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass
                if not self.failing:
                    log.warning("status file %s not written: %s", self.path, e)
                self.failing = True
                return
            if self.failing:
                log.info("status file %s written again", self.path)
            self.failing = False


def read_status(path: Path) -> dict | None:
    try:
        d = json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return d if isinstance(d, dict) else None


class Window:
    """The last N samples of a measurement, for p50/p99 without unbounded memory."""

    def __init__(self, n: int = 1000):
        self.values = np.zeros(n)
        self.count = 0

    def add(self, v: float) -> None:
        self.values[self.count % len(self.values)] = v
        self.count += 1

    def percentiles(self) -> dict:
        vals = self.values[: min(self.count, len(self.values))]
        if not len(vals):
            return {}
        return {"p50": round(float(np.percentile(vals, 50)), 3),
                "p99": round(float(np.percentile(vals, 99)), 3),
                "max": round(float(vals.max()), 3)}


MAX_UNACKED = 4096  # resume times kept for epochs the standby has not acknowledged yet


class EpochObserver(Protocol):
    """Who else hears of each epoch (the node's Prometheus metrics, `ops/metrics.py`)."""

    def captured(self, pause_ms: float, pages: int, stream_bytes: int) -> None: ...
    def sent(self, pages: int, nbytes: int) -> None: ...
    def acked(self, ack_ms: float) -> None: ...
    def waited(self, seconds: float) -> None: ...


class EpochMetrics:
    """The primary's per-epoch measurements: pauses, dirty pages, bytes, back-pressure."""

    def __init__(self, observer: EpochObserver | None = None):
        self.observer = observer
        self.acked_at = 0.0  # wall time of the newest ACK
        self.pause_ms, self.pages, self.stream_bytes = Window(), Window(), Window()
        self.ack_ms = Window()
        self._resumed: dict[int, float] = {}  # epoch -> monotonic resume, until its ACK
        self._lock = threading.Lock()  # capture adds, the ACK reader takes
        self._acked = -1  # the newest epoch acknowledged
        self.totals = {"epochs": 0, "dirty_pages": 0, "sent_bytes": 0}  # after epoch 0
        self.backpressure = {"waits": 0, "waited_ms": 0.0}  # the VM held for a full queue

    def captured(self, pause_ms: float, pages: int, stream_bytes: int, epoch: int,
                 resumed_at: float) -> None:
        self.pause_ms.add(pause_ms)
        self.pages.add(pages)
        self.stream_bytes.add(stream_bytes)
        self._tell("captured", pause_ms, pages, stream_bytes)
        with self._lock:
            if epoch <= self._acked:  # its ACK came before the resume (the VM was held)
                self.ack_ms.add(0.0)
                return
            if len(self._resumed) >= MAX_UNACKED:  # the standby is far behind
                self._resumed.pop(next(iter(self._resumed)))
            self._resumed[epoch] = resumed_at

    def acked(self, epoch: int, at: float) -> None:
        """An ACK covers every epoch up to its own; the latency is the newest one's."""
        with self._lock:
            self._acked = max(self._acked, epoch)
            self.acked_at = time.time()
            resumed = self._resumed.pop(epoch, None)
            for older in [e for e in self._resumed if e < epoch]:
                del self._resumed[older]
            if resumed is not None:
                self.ack_ms.add(max(0.0, at - resumed) * 1000)
                self._tell("acked", max(0.0, at - resumed) * 1000)

    def sent(self, pages: int, nbytes: int) -> None:
        self.totals["sent_bytes"] += nbytes
        self.totals["dirty_pages"] += pages
        self.totals["epochs"] += 1
        self._tell("sent", pages, nbytes)

    def waited(self, seconds: float) -> None:
        self.backpressure["waits"] += 1
        self.backpressure["waited_ms"] += seconds * 1000
        self._tell("waited", seconds)

    def _tell(self, what: str, *args: float) -> None:
        """The observer hears of it; its failure is logged once, never the capture's end."""
        if self.observer is None:
            return
        try:
            getattr(self.observer, what)(*args)
        except Exception:
            log.exception("epoch observer failed (%s); it hears no more", what)
            self.observer = None

    def fill(self, doc: PrimaryStatus) -> Any:
        doc.pause_ms = self.pause_ms.percentiles()
        doc.ack_ms = self.ack_ms.percentiles()
        doc.dirty_pages = self.pages.percentiles()
        doc.bytes_per_epoch = self.stream_bytes.percentiles()
        doc.backpressure = {k: round(v, 1) for k, v in self.backpressure.items()}
        doc.totals = dict(self.totals)
        doc.acked_at = self.acked_at
        return doc
