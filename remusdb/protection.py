"""`remusdb protect` and `remusdb standby`: the daemons wired to a VM, signals and a log."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from remusdb import paths
from remusdb.checkpoint import participants
from remusdb.checkpoint.participants import SessionAids
from remusdb.checkpoint.primary import PrimaryDaemon
from remusdb.checkpoint.recording import Recorder
from remusdb.checkpoint.standby import StandbyDaemon
from remusdb.commitprotect.outbuf import OutputBuffer
from remusdb.commitprotect.relay import NetRelay
from remusdb.config import Config
from remusdb.hypervisor.tap import ensure_tap
from remusdb.vm import image_for, launch_served, make_spec

log = logging.getLogger(__name__)


def role_dir(cfg: Config, role: str, base: str | None = None) -> Path:
    return paths.role_dir(cfg.vm.name, role, base or cfg.vm.run_dir)


def _on_signals(handler: Callable[[], None]) -> threading.Event:
    done = threading.Event()

    def on(sig, frame):
        done.set()
        handler()
    signal.signal(signal.SIGTERM, on)
    signal.signal(signal.SIGINT, on)
    return done


def protect(cfg: Config, run_dir: Path, aids: SessionAids | None = None,
            net_trace: Path | None = None) -> int:
    aids = aids or SessionAids()
    image = image_for(cfg)
    ensure_tap(cfg.vm.tap, cfg.vm.bridge)
    # The protected VM's NIC is a stream socket to the net relay, which owns the tap: its
    # output waits for the standby (output commit).
    net_sock = Path(run_dir) / "net.sock"
    guest, disk = launch_served(cfg, image, run_dir, network="stream", stream_socket=net_sock)
    opts = cfg.optimizations
    try:
        relay = NetRelay.open(net_sock, cfg.vm.tap, OutputBuffer(opts.cp, opts.cp_dscp),
                              trace=net_trace).start()
    except BaseException:
        guest.kill()
        disk.close()
        raise
    log.info(f"VM {cfg.vm.name} running (QEMU pid {guest.pid}), disk served from {disk.image}, "
             f"network through the relay on {cfg.vm.tap} (commit protection "
             f"{'on, DSCP ' + str(opts.cp_dscp) if opts.cp else 'off'}); protecting every "
             f"{cfg.checkpoint.interval_ms} ms to {cfg.standby.address}:{cfg.standby.port}")
    parts = participants.build(cfg, guest.files.ram, disk, relay, aids)
    daemon = PrimaryDaemon(cfg, guest, run_dir, parts)
    if not aids.output_commit:
        log.warning("output commit off (benchmarks only): the world sees output the standby "
                    "may not have; a failover can contradict it")
    done = _on_signals(daemon.stop)
    for p in parts:
        if isinstance(p, Recorder):
            def start_recording(sig: int, frame: FrameType | None, r: Recorder = p) -> None:
                r.start()
            signal.signal(signal.SIGUSR1, start_recording)
    try:
        daemon.protect()
        while not done.wait(0.5) and guest.running:
            pass
    finally:
        guest.stop()
        relay.close()
        disk.close()
    return 0


def standby(cfg: Config, run_dir: Path, trace: Path | None = None) -> int:
    image = image_for(cfg)

    def spec():
        ensure_tap(cfg.vm.tap, cfg.vm.bridge)
        # The failed-over VM runs on the standby's own copy of the disk, as of the checkpoint,
        # and on the tap: unprotected now, nothing to hold its output for.
        return make_spec(cfg, image, daemon.store.disk_path, disk_format="raw", network="tap",
                         tap=cfg.vm.tap)

    daemon = StandbyDaemon(cfg, run_dir, spec,
                           heartbeat_timeout=cfg.standby.heartbeat_timeout_ms / 1000,
                           fence_command=cfg.standby.fence_command, trace=trace)

    def stop_now():
        # A blocking receive would not notice a flag: leave through the stack, the store is
        # crash-consistent at any point, and the finally below stops a failed-over VM.
        daemon.stopped.set()
        raise SystemExit(0)

    done = _on_signals(stop_now)
    log.info(f"listening on {cfg.standby.address}:{cfg.standby.port}, store {daemon.store.root}")
    try:
        daemon.serve()
        while daemon.guest is not None and daemon.guest.running and not done.wait(0.5):
            pass
    finally:
        if daemon.guest is not None:
            daemon.guest.stop()
    return 0
