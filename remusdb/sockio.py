"""Socket helpers shared by the checkpoint link and the disk server."""

from __future__ import annotations

import socket
from typing import Any


def recv_into_all(sock: socket.socket | Any, view: memoryview, got: int = 0) -> None:
    """Fill `view` from `sock` (its first `got` bytes are already there)."""
    while got < len(view):
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("peer closed the connection")
        got += k
