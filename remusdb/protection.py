"""`remusdb protect`, `remusdb standby` and `remusdb node`: a node daemon on this host, started
in a role, with signals wired (SIGTERM/SIGINT stop it in order; SIGUSR1 starts a recording)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from remusdb import paths
from remusdb.checkpoint.recording import Recorder
from remusdb.config import Config
from remusdb.errors import RemusError
from remusdb.ops.api import ApiServer, token_path
from remusdb.reprotect.node import NodeDaemon, NodeOptions
from remusdb.reprotect.roles import Role
from remusdb.vm import image_for

log = logging.getLogger(__name__)


START_REQUEST = "start.request"


def role_dir(cfg: Config, role: str, base: str | None = None) -> Path:
    return paths.role_dir(cfg.vm.name, role, base or cfg.vm.run_dir)


def request_start(d: Path) -> Path:
    """`remusdb start`: the next node start in `d` starts the VM (judged as by protect)."""
    d.mkdir(parents=True, exist_ok=True)
    path = d / START_REQUEST
    path.write_text(f"{time.time():.0f}\n")
    return path


def take_start_request(d: Path) -> bool:
    """Whether a start was requested; the request is gone either way, so a node that
    refuses to start the VM, or crashes, comes back as a standby."""
    try:
        (d / START_REQUEST).unlink()
    except FileNotFoundError:
        return False
    log.info("a start was requested (remusdb start): starting the VM here unless the peer "
             "runs it or a checkpoint exists")
    return True


def run_node(cfg: Config, host: str, start_as: Role, run_dir: Path,
             options: NodeOptions | None = None) -> int:
    """Run this host's node daemon until it is stopped. `host` names this host's config
    section (primary or standby); `start_as` PRIMARY starts the VM here unless the peer
    already runs it."""
    options = options or NodeOptions()
    os.umask(0o077)  # run dirs, RAM and disk images, journals, sockets: the owner's only
    if not options.aids.output_commit:
        log.warning("output commit off (benchmarks only): the world sees output the standby "
                    "may not have; a failover can contradict it")
    node = NodeDaemon(cfg, host, run_dir, image_for(cfg), options)
    api = start_api(cfg, host, node)

    def on_stop(sig: int, frame: FrameType | None) -> None:
        if node.record.node.role is Role.PRIMARY:
            # Ending protection takes locks the interrupted main thread may hold: not here.
            threading.Thread(target=node.stop, name="stop", daemon=True).start()
        else:
            node.stop()
            # A blocking receive would not notice a flag: leave through the stack; the
            # store is crash-consistent at any point.
            raise SystemExit(0)

    def on_record(sig: int, frame: FrameType | None) -> None:
        for p in node.primary.participants if node.primary else []:
            if isinstance(p, Recorder):
                p.start()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGUSR1, on_record)
    log.info("node %s of VM %s: listening on %s:%d, peer %s:%d, starting as %s", host,
             cfg.vm.name, *node.address, *node.peer, start_as.value)
    try:
        node.run(start_as)
    finally:
        if api is not None:
            api.close()
    return 0


def start_api(cfg: Config, host: str, node: NodeDaemon) -> ApiServer | None:
    """This node's REST API, where the config gives it a port; a port that cannot be had
    stops the node before it does anything (one line)."""
    address, port = cfg.api_address(host)
    if not port:
        return None
    try:  # a token file others can read stops the start here, in one line
        return ApiServer(cfg.api.bind or address, port, node, node.metrics,
                         token_path(cfg)).start()
    except RemusError:
        node.listener.close()
        raise
