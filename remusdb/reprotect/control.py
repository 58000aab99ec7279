"""The node's control socket: `remusdb switchover` and `remusdb reprotect` ask, the node
decides (a switchover only from a protected primary; a reprotect only where the VM runs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from remusdb.checkpoint.control import ControlReply, call
from remusdb.errors import RemusError

NODE_SOCKET = "node.sock"
COMMANDS = ("switchover", "reprotect")


@dataclass
class NodeRequest:
    cmd: str

    @classmethod
    def from_json(cls, d: object) -> NodeRequest:
        cmd = d.get("cmd") if isinstance(d, dict) else None
        if cmd not in COMMANDS:
            raise ValueError(f"unknown command {cmd!r}")
        return cls(cmd)


def request(run_dir: Path, cmd: str, timeout: float = 60.0) -> ControlReply:
    reply = call(Path(run_dir) / NODE_SOCKET, asdict(NodeRequest(cmd)), timeout)
    if not reply.ok:
        raise RemusError(f"{cmd} refused: {reply.error or 'failed'}")
    return reply
