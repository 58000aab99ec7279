"""Keep a checkpointed guest's clock with the host's.

The guest's clock stands still while the VM is paused, and a protected VM pauses at every
checkpoint: under TCG here the guest lost ~425 ms per second under load (KVM's kvmclock is
frozen across a stop too). No NTP slew can follow that, so the keeper steps the guest clock
through the guest agent whenever it drifts past a bound.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from remusdb.errors import RemusError
from remusdb.hypervisor.agent import GuestAgent


class ClockKeeper(threading.Thread):
    def __init__(self, agent_socket: Path, period: float = 0.5, max_offset: float = 0.1):
        super().__init__(name="clock", daemon=True)
        self.path = Path(agent_socket)
        self.period, self.max_offset = period, max_offset
        self.stop_event = threading.Event()
        self.steps = 0
        self.stepped_s = 0.0  # the guest time given back in all: how long its VM stood still
        self.last_offset: float | None = None
        self.errors = 0

    def run(self) -> None:
        wait = self.period
        while not self.stop_event.wait(wait):
            # The channel may be busy with another client: try again soon rather than drift.
            wait = self.period if self.check() is not None else 0.1

    def check(self) -> float | None:
        # One connection per check: qemu-ga serves a single client, leave it free between.
        agent = GuestAgent(self.path)
        try:
            agent.sync(timeout=2.0)
            guest = agent.call("guest-get-time", timeout=2.0) / 1e9
            offset = time.time() - guest
            if abs(offset) > self.max_offset:
                try:
                    agent.call("guest-set-time", {"time": time.time_ns()}, timeout=5.0)
                except RemusError as e:
                    # qemu-ga sets the clock, then fails only at copying it to the RTC
                    # (no hwclock in the guest): the step itself took effect.
                    if "hwclock" not in str(e):
                        raise
                self.steps += 1
                self.stepped_s += offset
            self.last_offset = offset
            return offset
        except (RemusError, OSError, TimeoutError, ValueError):
            self.errors += 1
            return None
        finally:
            agent.close()

    def stop(self) -> None:
        self.stop_event.set()

    def summary(self) -> dict:
        return {"offset_s": None if self.last_offset is None else round(self.last_offset, 3),
                "steps": self.steps, "stepped_s": round(self.stepped_s, 3),
                "errors": self.errors}
