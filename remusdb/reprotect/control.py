"""The node's control socket: `remusdb switchover`, `remusdb reprotect` and `remusdb interval`
ask, the node decides (a switchover or a new interval only on a protected primary; a reprotect
only where the VM runs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from remusdb.checkpoint.control import ControlReply, call
from remusdb.config import INTERVAL_BOUNDS, interval_ok
from remusdb.errors import RemusError

NODE_SOCKET = "node.sock"
COMMANDS = ("switchover", "reprotect", "interval")


@dataclass
class NodeRequest:
    cmd: str
    interval_ms: int | None = None  # "interval": the new checkpoint interval

    @classmethod
    def from_json(cls, d: object) -> NodeRequest:
        cmd = d.get("cmd") if isinstance(d, dict) else None
        if cmd not in COMMANDS:
            raise ValueError(f"unknown command {cmd!r}")
        ms = d.get("interval_ms") if isinstance(d, dict) else None
        if cmd == "interval":
            if not interval_ok(ms):
                raise ValueError(f"interval_ms must be an integer in {INTERVAL_BOUNDS}, "
                                 f"not {ms!r}")
        elif ms is not None:
            raise ValueError(f"{cmd} takes no interval_ms")
        return cls(cmd, ms)


def request(run_dir: Path, cmd: str, timeout: float = 60.0, interval_ms: int | None = None
            ) -> ControlReply:
    reply = call(Path(run_dir) / NODE_SOCKET, asdict(NodeRequest(cmd, interval_ms)), timeout)
    if not reply.ok:
        raise RemusError(f"{cmd} refused: {reply.error or 'failed'}")
    return reply
