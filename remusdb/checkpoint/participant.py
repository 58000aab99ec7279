"""What every checkpointed device answers: the phases of one protection session.

Xen's Remus gave each checkpointed device the same hooks and walked them at every phase; the
primary daemon does the same with its participants (disk write log, output commit, read
tracking, verification, recording, trace), so adding one never touches the daemon. Hooks run
in the thread of their phase: `on_seed` in the daemon's main thread before QEMU's initial copy
(the VM runs), `on_pause` and `on_resume` in the capture thread (the VM is paused in between),
`on_send` in the sender thread, `on_ack` in the receiver thread, `on_stop` wherever protection
ends (also a signal handler). Each must be quick in `on_pause`: the VM waits. A checkpoint in
flight when protection ends may still bring `on_pause`/`on_resume` after `on_stop`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from remusdb.checkpoint.encode import EpochOut

Send = Callable[[list], None]  # sends one encoded frame to the standby


@dataclass
class Welcome:
    """The standby's answer to HELLO: its fields, and its disk's block digests when it asks
    for a resync instead of a full copy."""

    fields: dict = field(default_factory=dict)
    digests: np.ndarray | None = None


class Participant:
    """Base: every hook does nothing."""

    status_key: str | None = None  # where summary() goes in the primary's status

    def hello(self) -> dict:
        """Fields this participant adds to the HELLO frame."""
        return {}

    def on_welcome(self, welcome: Welcome) -> None:
        """The standby accepted the session (before on_seed)."""

    def on_seed(self, send: Send) -> None:
        """Protection begins, the VM running: send what must precede QEMU's initial copy."""

    def on_pause(self, out: EpochOut) -> None:
        """The VM is paused and epoch `out` captured: add this device's part of it."""

    def on_resume(self, out: EpochOut) -> None:
        """The VM runs again after epoch `out` (its pause is known)."""

    def on_send(self, out: EpochOut) -> None:
        """Epoch `out` is about to be encoded and sent (the VM runs)."""

    def on_ack(self, epoch: int) -> None:
        """The standby committed `epoch`."""

    def on_stop(self, reason: str, vm_gone: bool = False) -> None:
        """Protection ended: the VM runs on unprotected, or (`vm_gone`, a switchover) it was
        stopped here at the last checkpoint and the standby runs it."""

    def summary(self) -> dict | int | None:
        """The value of PrimaryStatus.<status_key>: a table, or a count (recordings_done)."""
        return None
