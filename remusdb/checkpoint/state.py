"""The daemons' states: enums whose values are what the status file and `remusdb status` show,
changed in one place (qemu.qmp's Runstate and `_set_state` are the model)."""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar


class PrimaryState(enum.StrEnum):
    STARTING = "starting"
    SEEDING = "seeding"  # the full copy (epoch 0) is on its way, not yet acknowledged
    PROTECTED = "protected"
    UNPROTECTED = "unprotected"  # protection ended; the VM runs on


class StandbyState(enum.StrEnum):
    WAITING = "waiting"  # for a primary (none yet, or it ended protection with BYE)
    RECOVERED = "recovered"  # restarted with a committed checkpoint; the primary's fate unknown
    RECEIVING = "receiving"
    FENCING = "fencing"  # the primary went silent: the fence command runs
    PRIMARY_SILENT = "primary-silent"  # silent and not fenced: waits for an operator
    AWAITING_WITNESS = "awaiting-witness"  # the primary failed: failing over once we hold the key
    INTERNAL_ERROR = "internal-error"  # a bug ended the session: no automatic failover
    FAILING_OVER = "failing-over"
    FAILOVER_FAILED = "failover-failed"  # the store is intact: `remusdb failover` retries
    ACTIVE = "active"  # the VM runs here


S = TypeVar("S", PrimaryState, StandbyState)


class StateHolder(Generic[S]):
    """A state, its history (tests assert sequences) and a hook run after each change."""

    def __init__(self, initial: S, logger: logging.Logger,
                 changed: Callable[[], None] = lambda: None):
        self.current: S = initial
        self.history: list[S] = [initial]
        self._log, self._changed = logger, changed
        self._lock = threading.Lock()

    def set(self, state: S) -> None:
        with self._lock:
            if state != self.current:
                self._log.info("state: %s -> %s", self.current.value, state.value)
                self.current = state
                self.history.append(state)
        self._changed()
