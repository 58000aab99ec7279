"""The VM in protectable form on this host: QEMU, its disk through the disk server, its NIC
through the net relay, its RAM in a shared file.

Both ways a host comes to run the VM give the same thing: `start_fresh` (the first primary,
from the saved snapshot) and `take_over` (a failover or handover, from the store's committed
checkpoint). So the VM a failover resumed can be protected again without a restart: a standby
that joins only needs a disk resync and QEMU's RAM copy.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from remusdb.checkpoint import failover
from remusdb.checkpoint.store import StandbyStore
from remusdb.commitprotect.outbuf import OutputBuffer
from remusdb.commitprotect.relay import NetRelay
from remusdb.config import Config
from remusdb.disk.server import DiskServer
from remusdb.errors import RemusError
from remusdb.hypervisor.qemu import GuestSpec, QemuGuest
from remusdb.hypervisor.tap import ensure_tap
from remusdb.image.builder import GuestImage
from remusdb.reprotect.record import NodeRecord
from remusdb.reprotect.roles import Event
from remusdb.vm import launch_served, make_spec
from remusdb.witness import arp

log = logging.getLogger(__name__)
PROBE_WAIT_S = 0.1  # per try, two tries: what a failover with the witness spends on it


@dataclass
class ServedVM:
    guest: QemuGuest
    disk: DiskServer
    relay: NetRelay
    report: dict  # a take-over's epoch and timings (empty for a fresh start)

    @property
    def running(self) -> bool:
        return self.guest.running

    @property
    def ram_file(self) -> Path:
        return self.guest.spec.ram_file or self.guest.files.ram

    def close(self, stop_vm: bool = True) -> None:
        if stop_vm:
            self.guest.stop()
        self.relay.close()
        self.disk.close()


def _relay(cfg: Config, sock: Path, guest: QemuGuest, trace: Path | None) -> NetRelay:
    opts = cfg.optimizations
    try:
        return NetRelay.open(sock, cfg.vm.tap, OutputBuffer(opts.cp, opts.cp_dscp),
                             trace=trace).start()
    except BaseException:
        guest.kill()
        raise


def start_fresh(cfg: Config, image: GuestImage, run_dir: Path, store: StandbyStore,
                net_trace: Path | None = None) -> ServedVM:
    """The first primary: the VM from the saved snapshot, its disk a new lineage in the
    store's place (so this host can later rejoin as a standby with a resync)."""
    ensure_tap(cfg.vm.tap, cfg.vm.bridge)
    net_sock = Path(run_dir) / "net.sock"
    lineage = uuid.uuid4().hex
    store.adopt_disk(lineage, 0)  # first: a crash from here on leaves no stale checkpoint
    guest, disk = launch_served(cfg, image, run_dir, network="stream", stream_socket=net_sock,
                                raw=store.disk_path, lineage=lineage)
    store.adopt_disk(lineage, disk.size)
    try:
        relay = _relay(cfg, net_sock, guest, net_trace)
    except BaseException:
        disk.close()
        raise
    return ServedVM(guest, disk, relay, {})


def _nobody_answers(cfg: Config) -> None:
    """The last guard before `cont`: nothing else may answer for the VM's address."""
    t0 = time.monotonic()
    try:
        who = arp.probe(cfg.vm.bridge, cfg.vm.address, wait=PROBE_WAIT_S)
    except OSError as e:
        log.warning("ARP probe on %s not sent (%s): resuming without it", cfg.vm.bridge, e)
        return
    if who is not None:
        raise RemusError(f"{who} answers ARP for the VM's address {cfg.vm.address} on "
                         f"{cfg.vm.bridge}: another copy may run; not resuming")
    log.info("ARP probe: nothing answers for %s on %s (%.0f ms)", cfg.vm.address,
             cfg.vm.bridge, (time.monotonic() - t0) * 1000)


class TakeOver:
    """The standby daemon's failover, done so the resumed VM stays protectable: the disk
    server on the store's disk before QEMU starts, the relay on QEMU's stream socket before
    `cont` (the guest's first frames, its gratuitous ARPs, must reach the tap)."""

    def __init__(self, cfg: Config, image: GuestImage, run_dir: Path,
                 net_trace: Path | None = None, record: NodeRecord | None = None):
        self.cfg, self.image, self.run_dir, self.net_trace = cfg, image, Path(run_dir), net_trace
        self.record = record  # the node: its new term is on disk before the VM runs
        self.served: ServedVM | None = None
        self.speak: Callable[[], bool] | None = None  # the witness's lease, when one is held

    def __call__(self, store: StandbyStore, spec: GuestSpec, vm_dir: Path, cp: bool
                 ) -> failover.TakenOver:
        cfg = self.cfg
        lineage = store.lineage
        ensure_tap(cfg.vm.tap, cfg.vm.bridge)
        vm_dir.mkdir(parents=True, exist_ok=True)
        disk = DiskServer(store.disk_path, vm_dir / "disk.sock", lineage)
        disk.start()
        spec.disk, spec.disk_format = disk.socket_path, "nbd"
        spec.network, spec.stream_socket = "stream", vm_dir / "net.sock"
        relays: list[NetRelay] = []

        def before_cont(guest: QemuGuest) -> None:
            relays.append(_relay(cfg, vm_dir / "net.sock", guest, self.net_trace))
            relays[0].speak = self.speak
            if cfg.witness.enabled:
                _nobody_answers(cfg)
            if self.speak is not None and not self.speak():
                raise RemusError("the witness's lease ended before the VM could resume")

        if self.record is not None:
            self.record.apply(Event.TOOK_OVER)  # the new term, persisted, before `cont`
        try:
            taken = failover.take_over(store, spec, vm_dir, cp, before_cont=before_cont)
        except BaseException:
            for r in relays:
                r.close()
            disk.close()
            if self.record is not None:
                self.record.apply(Event.VM_LOST)
            raise
        self.served = ServedVM(taken.guest, disk, relays[0], taken.report)
        return taken

    def spec(self, store: StandbyStore) -> GuestSpec:
        """The failed-over VM's command line: the primary's, disk and NIC set at take-over."""
        return make_spec(self.cfg, self.image, store.disk_path, disk_format="nbd",
                         network="stream")
