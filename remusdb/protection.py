"""`remusdb protect` and `remusdb standby`: the daemons wired to a VM, signals and a log."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from remusdb.checkpoint.primary import PrimaryDaemon
from remusdb.checkpoint.standby import StandbyDaemon
from remusdb.config import Config
from remusdb.hostnet import ensure_tap
from remusdb.vm import image_for, launch_served, make_spec


def role_dir(cfg: Config, role: str, base: str | None = None) -> Path:
    return Path(base or cfg.vm.run_dir) / cfg.vm.name / role


def logger(role: str):
    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} remusdb {role}: {msg}", file=sys.stderr, flush=True)
    return log


def _on_signals(handler) -> threading.Event:
    done = threading.Event()

    def on(sig, frame):
        done.set()
        handler()
    signal.signal(signal.SIGTERM, on)
    signal.signal(signal.SIGINT, on)
    return done


def protect(cfg: Config, run_dir: Path, verify_every: int = 0, trace: Path | None = None,
            verify_count: int = 0, record_dir: Path | None = None, record_epochs: int = 100) -> int:
    log = logger("primary")
    image = image_for(cfg)
    if cfg.vm.network == "tap":
        ensure_tap(cfg.vm.tap, cfg.vm.bridge)
    guest, disk = launch_served(cfg, image, run_dir, tap=cfg.vm.tap, log=sys.stderr)
    log(f"VM {cfg.vm.name} running (QEMU pid {guest.pid}), disk served from {disk.image}; "
        f"protecting every {cfg.checkpoint.interval_ms} ms to {cfg.standby.address}:"
        f"{cfg.standby.port}")
    daemon = PrimaryDaemon(cfg, guest, run_dir, disk=disk, verify_every=verify_every, log=log,
                           trace=trace, verify_count=verify_count, record_dir=record_dir,
                           record_epochs=record_epochs)
    done = _on_signals(daemon.stop)
    signal.signal(signal.SIGUSR1, lambda sig, frame: daemon.start_recording())
    try:
        daemon.protect()
        while not done.wait(0.5) and guest.running:
            pass
    finally:
        guest.stop()
        disk.close()
    return 0


def standby(cfg: Config, run_dir: Path) -> int:
    log = logger("standby")
    image = image_for(cfg)

    def spec():
        if cfg.vm.network == "tap":
            ensure_tap(cfg.vm.tap, cfg.vm.bridge)
        # The failed-over VM runs on the standby's own copy of the disk, as of the checkpoint.
        return make_spec(cfg, image, daemon.store.disk_path, disk_format="raw", tap=cfg.vm.tap)

    daemon = StandbyDaemon(cfg, run_dir, spec,
                           heartbeat_timeout=cfg.standby.heartbeat_timeout_ms / 1000,
                           fence_command=cfg.standby.fence_command, log=log)
    def stop_now():
        # A blocking receive would not notice a flag: leave through the stack, the store is
        # crash-consistent at any point, and the finally below stops a failed-over VM.
        daemon.stopped.set()
        raise SystemExit(0)

    done = _on_signals(stop_now)
    log(f"listening on {cfg.standby.address}:{cfg.standby.port}, store {daemon.store.root}")
    try:
        daemon.serve()
        while daemon.guest is not None and daemon.guest.running and not done.wait(0.5):
            pass
    finally:
        if daemon.guest is not None:
            daemon.guest.stop()
    return 0
