"""The database VM: a guest spec from the config, cold boot, and the booted-VM snapshot cache.

A cold boot under TCG takes tens of seconds; tests and the demo instead restore a VM saved right
after its first boot (PostgreSQL answers ~2 s after QEMU starts). The snapshot is keyed by the
image and everything on the QEMU command line that the saved state depends on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from remusdb import paths
from remusdb.config import Config
from remusdb.disk.server import DiskServer
from remusdb.errors import RemusError
from remusdb.hypervisor import qemubuild
from remusdb.hypervisor.agent import AgentError
from remusdb.hypervisor.qemu import QEMU_BINARY, GuestSpec, QemuGuest, resolve_accel
from remusdb.image import builder
from remusdb.image.builder import GuestImage

log = logging.getLogger(__name__)
DB_USER = DB_NAME = "remusdb"
PG_PORT, MARIADB_PORT = 5432, 3306
READY_CHECKS = {  # run inside the guest, as root (MariaDB's root: its unix socket)
    "postgresql": ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(PG_PORT)],
    "mariadb": ["mariadb-admin", "--connect-timeout=2", "ping"],
}


@functools.cache
def db_password() -> str:
    """The application role's password of the default image, which the lab's VMs boot."""
    img = builder.cached_image()
    if img is None:
        raise RemusError("no guest image built yet: run 'remusdb image build'")
    return img.credentials().password


def image_for(cfg: Config, build: bool = True) -> GuestImage:
    if cfg.vm.image == "default":
        img = builder.build() if build else builder.cached_image()
        if img is None:
            raise RemusError("no guest image built yet: run 'remusdb image build'")
        return img
    root = Path(cfg.vm.image)
    kernel, initrd = root.parent / "vmlinuz", root.parent / "initrd.img"
    for p in (root, kernel, initrd):
        if not p.is_file():
            raise RemusError(f"vm.image = {cfg.vm.image!r}: {p.name} not found beside the image")
    return GuestImage(root=root, kernel=kernel, initrd=initrd, key=f"path:{root.resolve()}")


def qemu_binary(cfg: Config, accel: str, build: bool = True) -> str:
    """Debian's QEMU under KVM; under TCG the patched build (Debian's 7.2 deadlocks and misses
    dirty pages there during COLO checkpoints: docs/hypervisor.md)."""
    choice = cfg.vm.qemu
    if choice == "system" or (choice == "auto" and accel == "kvm"):
        return QEMU_BINARY
    if choice in ("patched", "auto"):
        path = qemubuild.build() if build else qemubuild.patched_binary()
        if path is None:
            raise RemusError("the patched QEMU is not built yet: run 'remusdb qemu build'")
        return str(path)
    return choice


def make_spec(cfg: Config, image: GuestImage, disk: Path, disk_format: str = "qcow2",
              netns: str | None = None, **over) -> GuestSpec:
    vm = cfg.vm
    accel = resolve_accel(vm.accel)
    if "binary" not in over:
        over["binary"] = qemu_binary(cfg, accel)
    spec = GuestSpec(
        name=vm.name, memory=vm.memory, vcpus=vm.vcpus, accel=accel,
        cpu=vm.cpu, kernel=image.kernel, initrd=image.initrd, disk=disk,
        disk_format=disk_format, mac=vm.mac_address, ip=vm.ip, gateway=vm.gateway,
        init=vm.init, network=vm.network, netns=netns,
    )
    for k, v in over.items():
        setattr(spec, k, v)
    return spec


def create_overlay(base: Path, overlay: Path) -> None:
    """A qcow2 overlay so a guest never writes the cached base image."""
    overlay.unlink(missing_ok=True)
    r = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                        str(base.resolve()), str(overlay)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RemusError(f"qemu-img create failed: {r.stderr.strip()}")


def wait_databases(guest: QemuGuest, timeout: float, which=("postgresql", "mariadb")) -> None:
    """Poll inside the guest (through the agent, so it works from any network namespace)."""
    deadline = time.monotonic() + timeout
    pending = list(which)
    while pending:
        name = pending[0]
        try:
            r = guest.agent.exec(READY_CHECKS[name], timeout=30)
        except (AgentError, TimeoutError, OSError):
            r = None  # a guest busy booting under TCG can keep the agent from answering
        if r is not None and r.exitcode == 0:
            pending.pop(0)
            continue
        if not guest.running:
            raise RemusError("QEMU exited while waiting for the databases")
        if time.monotonic() > deadline:
            raise RemusError(f"{name} in the guest not ready after {timeout:.0f} s")
        time.sleep(0.5)


def sync_guest_clock(guest: QemuGuest) -> None:
    """A restored guest wakes with the clock of the moment it was saved."""
    guest.agent.call("guest-set-time", {"time": time.time_ns()})


def cold_boot(guest: QemuGuest, timeout: float = 300.0) -> float:
    t0 = time.monotonic()
    guest.start()
    # qemu-ga spins a vCPU until a first client connects: ping it as soon as it can answer.
    guest.wait_agent(timeout)
    wait_databases(guest, max(10.0, timeout - (time.monotonic() - t0)))
    dt = time.monotonic() - t0
    log.info(f"cold boot: PostgreSQL and MariaDB answering {dt:.1f} s after QEMU start")
    return dt


def snapshot_key(spec: GuestSpec, image: GuestImage) -> str:
    blob = json.dumps({"image": image.key, "spec": spec.fingerprint(), "v": 1}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def snapshot_dir(key: str) -> Path:
    return paths.cache_dir() / "snapshots" / key


def launch(cfg: Config, image: GuestImage, run_dir: Path, netns: str | None = None,
           use_snapshot: bool = True, **over) -> QemuGuest:
    """Start the database VM with PostgreSQL and MariaDB answering.

    From the saved snapshot when there is one; else cold boot, save a snapshot for next time
    (when use_snapshot), and keep running.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    disk = run_dir / "disk.qcow2"
    spec = make_spec(cfg, image, disk, netns=netns, **over)
    guest = QemuGuest(spec, run_dir)
    snap = snapshot_dir(snapshot_key(spec, image))
    try:
        if use_snapshot and (snap / "state").is_file():
            restore_snapshot(guest, snap)
        else:
            create_overlay(image.root, disk)
            cold_boot(guest)
            if use_snapshot:
                save_snapshot(guest, snap)
    except BaseException:
        guest.kill()
        raise
    guest.agent.close()  # qemu-ga serves one client at a time: leave the channel free
    return guest


def launch_served(cfg: Config, image: GuestImage, run_dir: Path, netns: str | None = None,
                  raw: Path | None = None, lineage: str = "",
                  **over) -> tuple[QemuGuest, DiskServer]:
    """The database VM with its disk served by a DiskServer (protection): from the saved
    snapshot, whose disk becomes a private raw image (`raw`, default in run_dir)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    sock = run_dir / "disk.sock"
    spec = make_spec(cfg, image, sock, disk_format="nbd", netns=netns, **over)
    snap = snapshot_dir(snapshot_key(spec, image))
    if not (snap / "state").is_file():  # make it once, the ordinary way
        launch(cfg, image, run_dir / "first-boot", netns=netns, **over).kill()
        shutil.rmtree(run_dir / "first-boot", ignore_errors=True)
    raw = raw or run_dir / "disk.raw"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.unlink(missing_ok=True)
    r = subprocess.run(["qemu-img", "convert", "-O", "raw", str(snap / "disk.qcow2"), str(raw)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RemusError(f"qemu-img convert of the snapshot disk failed: {r.stderr.strip()}")
    server = DiskServer(raw, sock, lineage)
    server.start()
    guest = QemuGuest(spec, run_dir)
    try:
        restore_snapshot(guest, snap)
    except BaseException:
        guest.kill()
        server.close()
        raise
    guest.agent.close()
    return guest, server


def restore_snapshot(guest: QemuGuest, snap: Path) -> float:
    """Start `guest` from a saved snapshot, on a private copy of the snapshot's disk (a served
    disk is prepared by the caller)."""
    t0 = time.monotonic()
    if guest.spec.disk_format != "nbd":
        shutil.copy(snap / "disk.qcow2", guest.spec.disk)
    guest.restore(snap / "state")
    guest.wait_agent(60)
    sync_guest_clock(guest)
    wait_databases(guest, 60)
    dt = time.monotonic() - t0
    log.info(f"restored snapshot {snap.name}: databases answering {dt:.1f} s after QEMU start")
    return dt


def save_snapshot(guest: QemuGuest, snap: Path) -> None:
    """Save the running VM (state + its disk overlay) and let it run on."""
    t0 = time.monotonic()
    tmp = snap.parent / f".{snap.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        guest.save(tmp / "state")
        # Paused after the migration: the overlay is flushed and not changing.
        shutil.copy(guest.spec.disk, tmp / "disk.qcow2")
        (tmp / "meta.json").write_text(json.dumps(
            {"spec": guest.spec.fingerprint(), "saved_at": time.time()}, indent=2))
        shutil.rmtree(snap, ignore_errors=True)
        tmp.rename(snap)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    guest.qmp().cont()
    size = (snap / "state").stat().st_size
    log.info(f"saved snapshot {snap.name} ({size / 2**20:.0f} MiB) in "
             f"{time.monotonic() - t0:.1f} s")
