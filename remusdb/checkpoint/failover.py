"""Resume the VM on the standby from its last committed checkpoint.

A new QEMU with the same command line maps the standby's RAM image as its memory backend and
loads a synthesized incoming stream: configuration naming x-ignore-shared (so the mapped RAM is
not expected in the stream), the small ROM blocks' pages, and the checkpoint's device state.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from remusdb.checkpoint.store import StandbyStore
from remusdb.checkpoint.stream.format import Configuration
from remusdb.checkpoint.stream.write import write_incoming
from remusdb.commitprotect import recovery
from remusdb.errors import RemusError
from remusdb.hypervisor.clock import ClockKeeper
from remusdb.hypervisor.qemu import GuestSpec, QemuGuest

log = logging.getLogger(__name__)


@dataclass
class FailoverTimes:
    stream_built: float
    loaded: float
    running: float


def incoming_stream(store: StandbyStore) -> bytes:
    info = store.stream()
    pages: list[tuple[int, int, bytes]] = []
    for i, b in enumerate(info.blocks):
        if b.name == info.shared_block:
            continue
        img = store.image(i)  # small ROM/ACPI blocks: send all of it, zeros too, to be exact
        pages.extend((i, idx, img[idx].tobytes()) for idx in range(len(img)))
    cfg = Configuration(info.config.machine, ["x-ignore-shared"])
    # With x-ignore-shared QEMU checks the shared block's guest-physical address: the backend
    # region is mapped at offset 0 of its container.
    return write_incoming(cfg, info.ram_section_id, info.ram_section_version, info.blocks,
                          {info.shared_block: 0}, pages, store.devices())


def resume(store: StandbyStore, spec: GuestSpec, run_dir: Path, timeout: float = 60.0,
           before_cont: Callable[[QemuGuest], None] | None = None
           ) -> tuple[QemuGuest, FailoverTimes]:
    """Start the VM from the store; returns once it runs. The RAM image becomes live memory.
    `before_cont` runs with the state loaded, the VM not yet running (the net relay connects
    there)."""
    t0 = time.monotonic()
    run_dir.mkdir(parents=True, exist_ok=True)
    stream_file = run_dir / "incoming.stream"
    stream_file.write_bytes(incoming_stream(store))
    lineage, size = store.lineage, store.disk_size
    store.close()
    spec.ram_file = store.shared_block_path()
    guest = QemuGuest(spec, run_dir)
    t_built = time.monotonic()
    guest.start(incoming="defer")
    try:
        monitor = guest.qmp()
        monitor.set_migration_capabilities(x_ignore_shared=True)
        monitor.migrate_incoming(f"exec:cat {shlex.quote(str(stream_file))}")
        monitor.wait_status({"paused", "postmigrate", "running"}, timeout)
        t_loaded = time.monotonic()
        if before_cont is not None:
            before_cont(guest)
        # From `cont` on the images are live memory: the store claims no checkpoint (a
        # restarted standby must never offer them, with the old device state, as one).
        store.adopt_disk(lineage, size)
        monitor.cont()
        t_run = time.monotonic()
        # Re-protecting this VM later must send its RAM again.
        monitor.set_migration_capabilities(x_ignore_shared=False)
        monitor.execute("announce-self", initial=50, max=550, rounds=5, step=100)
    except BaseException:
        guest.kill()
        raise
    return guest, FailoverTimes(t_built - t0, t_loaded - t0, t_run - t0)


@dataclass
class TakenOver:
    """The VM running on this host from the committed checkpoint, and what it took."""

    guest: QemuGuest
    report: dict = field(default_factory=dict)  # epoch, timings, commit-protection recovery
    clock: ClockKeeper | None = None


def take_over(store: StandbyStore, spec: GuestSpec, run_dir: Path, cp: bool,
              before_cont: Callable[[QemuGuest], None] | None = None) -> TakenOver:
    """Resume the VM, then what a resumed VM needs: with commit protection, the sessions that
    were not committing aborted; the guest clock stepped over the failover gap, then kept."""
    epoch = store.committed
    guest, times = resume(store, spec, run_dir, before_cont=before_cont)
    done = TakenOver(guest, {"epoch": epoch, "stream_built_s": round(times.stream_built, 3),
                             "loaded_s": round(times.loaded, 3),
                             "running_s": round(times.running, 3)})
    if cp:
        try:
            rec = recovery.abort_uncommitted(guest.files.agent)
            done.report["cp_recovery"] = rec
            log.info("commit protection: %d session(s) that were not committing aborted and "
                     "closed in %.0f ms", rec["terminated"], rec["ms"])
        except RemusError as e:
            done.report["cp_recovery"] = {"error": str(e)}
            log.warning("%s; sessions that were mid-transaction wait for their TCP timeout", e)
    done.clock = ClockKeeper(guest.files.agent)
    deadline = time.monotonic() + 10
    while done.clock.check() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    done.clock.start()
    return done
