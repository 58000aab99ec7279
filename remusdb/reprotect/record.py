"""The node's record on disk: its term and last state, rewritten atomically at every change.

The term must survive a crash: a host that forgot it had seen term 5 could accept a stale
primary of term 4. The state is written for `remusdb status`; a restarted node never trusts
it to run the VM (its QEMU died with it), it starts as a standby.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from remusdb.errors import LocalError
from remusdb.reprotect.roles import Event, Node, NodeState

log = logging.getLogger(__name__)
FILE = "node.json"


class NodeRecord:
    """The node's current `Node`, its history (tests assert sequences) and its file."""

    def __init__(self, directory: Path, host: str, changed: Callable[[], None] = lambda: None):
        self.path = Path(directory) / FILE
        self.host = host
        self._lock = threading.Lock()
        self._changed = changed
        self.node = Node(NodeState.STANDBY, self._read_term())
        self.history: list[NodeState] = [self.node.state]
        self._write()

    def _read_term(self) -> int:
        try:
            term = json.loads(self.path.read_text()).get("term", 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, AttributeError) as e:
            raise LocalError(f"node record {self.path} unreadable: {e}") from None
        if not isinstance(term, int) or term < 0:
            raise LocalError(f"node record {self.path}: bad term {term!r}")
        return term

    @property
    def state(self) -> NodeState:
        return self.node.state

    @property
    def term(self) -> int:
        return self.node.term

    def apply(self, event: Event, peer_term: int = 0) -> Node:
        """Move by `event` (TransitionError if it cannot happen now), log, persist."""
        with self._lock:
            before = self.node
            self.node = before.after(event, peer_term)
            self._moved(before, event.value)
        self._changed()
        return self.node

    def adopt(self, term: int) -> None:
        with self._lock:
            before = self.node
            self.node = before.adopt(term)
            self._moved(before, "adopted the peer's term")
        self._changed()

    def _moved(self, before: Node, why: str) -> None:
        if self.node.state != before.state:
            self.history.append(self.node.state)
        if self.node != before:
            log.info("node %s: %s (term %d) -> %s (term %d): %s", self.host, before.state.value,
                     before.term, self.node.state.value, self.node.term, why)
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(FILE + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump({"host": self.host, "term": self.node.term,
                           "state": self.node.state.value}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            raise LocalError(f"cannot write the node record {self.path}: {e.strerror}") from None
