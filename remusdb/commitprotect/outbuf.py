"""The per-epoch output buffer: Remus output commit, relaxed by commit protection.

A frame the guest sent during epoch N may reach the world only once the standby holds epoch N's
checkpoint (thesis §5.1): otherwise a failover could roll back state the world has already seen.
With commit protection (§5.4) a frame the DBMS marked unprotected (its DSCP equals the codepoint)
goes out at once — unless an earlier frame of the same flow is still held: then it joins that
frame's epoch, right behind it, so the order within a connection never changes (per-flow FIFO).

Pure logic, no I/O: the relay feeds it frames, marks (the VM paused at a checkpoint) and the
standby's acknowledgements, and sends what it is told to.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from remusdb.commitprotect.frames import dscp, flow


@dataclass
class Counters:
    passed: int = 0  # out at once: not protecting (before the first mark, after stop)
    unprotected: int = 0  # out at once under CP
    queued_behind: int = 0  # unprotected, held behind an earlier frame of its flow
    held: int = 0  # protected, held for their epoch
    released: int = 0
    held_bytes_max: int = 0


@dataclass
class _Epoch:
    number: int
    frames: list = field(default_factory=list)  # bytes, in arrival order
    flows: list = field(default_factory=list)  # the flow of each frame (None: not tracked)


class OutputBuffer:
    def __init__(self, cp: bool, codepoint: int):
        self.cp, self.codepoint = cp, codepoint
        self.protecting = False
        self.ended = False  # stop() is final: a late mark must not start protecting again
        self.open: _Epoch | None = None  # the epoch the guest is running in
        self.closed: deque[_Epoch] = deque()  # checkpointed, waiting for the standby's ack
        self.acked = -1
        self.last_epoch = -1  # where the last frame add() kept went
        self.flows: dict[bytes, list] = {}  # flow -> [frames held, the last one's _Epoch]
        self.held_bytes = 0
        self.count = Counters()

    def add(self, buf, off: int = 0, n: int | None = None) -> bool:
        """A frame from the guest: True if it may go out now (the caller sends it from buf);
        False if the buffer kept a copy."""
        n = len(buf) - off if n is None else n
        if not self.protecting:
            self.count.passed += 1
            return True
        key = None
        if self.cp:
            if dscp(buf, off, n) == self.codepoint:
                behind = flow(buf, off, n) if self.flows else None
                state = self.flows.get(behind) if behind is not None else None
                if state is None:
                    self.count.unprotected += 1
                    return True
                self.count.queued_behind += 1
                self._keep(state[1], bytes(buf[off:off + n]), behind)
                return False
            key = flow(buf, off, n)
        self.count.held += 1
        # protecting is set only by mark(), which opens an epoch; stop() clears both together
        assert self.open is not None
        self._keep(self.open, bytes(buf[off:off + n]), key)
        return False

    def _keep(self, epoch: _Epoch, frame: bytes, key: bytes | None) -> None:
        self.last_epoch = epoch.number
        epoch.frames.append(frame)
        epoch.flows.append(key)
        if key is not None:
            state = self.flows.get(key)
            if state is None:
                self.flows[key] = [1, epoch]
            else:
                state[0] += 1
                state[1] = epoch
        self.held_bytes += len(frame)
        self.count.held_bytes_max = max(self.count.held_bytes_max, self.held_bytes)

    def mark(self, epoch: int) -> None:
        """The VM is paused for checkpoint `epoch`: what it sent so far belongs to that epoch.
        The first mark (epoch 0, the full copy) starts protection."""
        if self.ended:
            return
        if not self.protecting:
            self.protecting = True
        else:
            current = self.open
            assert current is not None  # protecting: mark() opened an epoch (see add())
            if epoch != current.number:
                raise ValueError(f"checkpoint {epoch} while epoch {current.number} is open")
            self.closed.append(current)
        self.open = _Epoch(epoch + 1)

    def release(self, acked: int) -> list[bytes]:
        """The standby holds checkpoint `acked`: the frames of every epoch up to it, in order."""
        out: list[bytes] = []
        self.acked = max(self.acked, acked)
        while self.closed and self.closed[0].number <= acked:
            out.extend(self._drop(self.closed.popleft()))
        return out

    def stop(self) -> list[bytes]:
        """Protection ended (the standby is gone, the VM runs on): everything held goes out,
        in order, and nothing is held from now on."""
        out: list[bytes] = []
        while self.closed:
            out.extend(self._drop(self.closed.popleft()))
        if self.open is not None:
            out.extend(self._drop(self.open))
        self.open, self.protecting, self.ended = None, False, True
        return out

    def _drop(self, epoch: _Epoch) -> list[bytes]:
        for frame, key in zip(epoch.frames, epoch.flows, strict=True):
            self.held_bytes -= len(frame)
            if key is not None:
                state = self.flows[key]
                state[0] -= 1
                if state[0] == 0:
                    del self.flows[key]
        self.count.released += len(epoch.frames)
        return epoch.frames

    @property
    def held_frames(self) -> int:
        return sum(len(e.frames) for e in self.closed) + (len(self.open.frames)
                                                          if self.open else 0)

    def summary(self) -> dict:
        return {"cp": self.cp, "codepoint": self.codepoint, "protecting": self.protecting,
                "held_frames": self.held_frames, "held_bytes": self.held_bytes,
                "open_epoch": self.open.number if self.open else None,
                **vars(self.count)}
