"""The drills' second-copy detector: every QEMU of the VM on both hosts, asked its run state over
QMP ten times a second. Two copies running at once is the one thing HA must never do, so a
drill fails on a single such sample, whatever the ledger says.

Each QEMU has an observer monitor (`RunFiles.observer`) beside the daemon's own; the detector
finds them under the drill's run directory, so a QEMU started by a failover is watched from its
first moment. A QEMU that does not answer (frozen, dying) is not running as far as clients can
tell, and is sampled as "unanswered" until it does.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from qemu.qmp import QMPClient

ANSWER_S = 0.2  # per QEMU and sample
# qemu.qmp logs every refused connection: a QEMU not yet (or no longer) there is expected here.
logging.getLogger("qemu.qmp.protocol.copy-watch").setLevel(logging.CRITICAL)


@dataclass
class Sample:
    at: float  # monotonic
    states: dict[str, str]  # observer socket -> QEMU's status, or "unanswered"

    @property
    def running(self) -> list[str]:
        return sorted(p for p, s in self.states.items() if s == "running")


@dataclass
class Copies:
    """What the detector saw: samples, and those with two or more copies running."""

    samples: int = 0
    qemus: set[str] = field(default_factory=set)
    second_copies: list[Sample] = field(default_factory=list)
    first_running: dict[str, float] = field(default_factory=dict)  # socket -> monotonic

    def add(self, sample: Sample) -> None:
        self.samples += 1
        self.qemus.update(sample.states)
        for p in sample.running:
            self.first_running.setdefault(p, sample.at)
        if len(sample.running) >= 2:
            self.second_copies.append(sample)

    def running_since(self, t: float, besides: str) -> float | None:
        """When a QEMU other than `besides` was first seen running after `t` (a failover's
        VM resuming), in seconds after `t`."""
        times = [at for p, at in self.first_running.items() if p != besides and at >= t]
        return round(min(times) - t, 2) if times else None

    def report(self) -> dict:
        first = self.second_copies[0] if self.second_copies else None
        return {"samples": self.samples, "qemus_seen": len(self.qemus),
                "second_copies": len(self.second_copies),
                "first_second_copy": {"running": first.running} if first else None}


class CopyWatch(threading.Thread):
    """Samples until stopped; `copies` is the result."""

    def __init__(self, base: Path, hz: float = 10.0):
        super().__init__(name="copy-watch", daemon=True)
        self.base, self.period = Path(base), 1.0 / hz
        self.copies = Copies()
        self._done = threading.Event()
        self._clients: dict[str, QMPClient] = {}

    def stop(self) -> dict:
        self._done.set()
        self.join(10)
        return self.copies.report()

    def run(self) -> None:
        asyncio.run(self._watch())

    async def _watch(self) -> None:
        try:
            while not self._done.is_set():
                t0 = time.monotonic()
                paths = [str(p) for p in self.base.glob("**/observe.sock")]
                states = await asyncio.gather(*(self._status(p) for p in paths))
                self.copies.add(Sample(t0, dict(zip(paths, states, strict=True))))
                await asyncio.sleep(max(0.0, self.period - (time.monotonic() - t0)))
        finally:
            for c in self._clients.values():
                await _close(c)

    async def _status(self, path: str) -> str:
        client = self._clients.get(path)
        try:
            if client is None:
                client = QMPClient("copy-watch")
                await asyncio.wait_for(client.connect(path), ANSWER_S)
                self._clients[path] = client
            reply = await asyncio.wait_for(client.execute("query-status"), ANSWER_S)
            return str(reply["status"])  # type: ignore[index]
        except Exception:  # gone, frozen, not yet listening: not serving anyone
            self._clients.pop(path, None)
            if client is not None:
                await _close(client)
            return "unanswered"


async def _close(client: QMPClient) -> None:
    try:
        await asyncio.wait_for(client.disconnect(), ANSWER_S)
    except Exception:
        pass
