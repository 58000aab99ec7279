"""A hardware (or softdog) watchdog for a primary daemon that itself hangs.

The lease keeper pets it at each renewal while it holds the key: a daemon that stops renewing
and cannot fence (hung, starved) has its host reset by the watchdog before its lease can end,
so its VM never runs beside the standby's. Once the host is fenced, or gives the key up, the
watchdog is disarmed with the magic close ('V'): a mute host needs no reset. Linux's watchdog
API (Documentation/watchdog/watchdog-api.rst): WDIOC_SETTIMEOUT, a write per keepalive.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct

from remusdb.errors import RemusError

log = logging.getLogger(__name__)
WDIOC_SETTIMEOUT = 0xC0045706  # _IOWR('W', 6, int)


class Watchdog:
    def __init__(self, path: str, timeout_s: int):
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            raise RemusError(f"watchdog {path}: {e.strerror}") from None
        try:
            got = fcntl.ioctl(self.fd, WDIOC_SETTIMEOUT, struct.pack("i", timeout_s))
        except OSError as e:
            os.close(self.fd)
            raise RemusError(f"watchdog {path}: cannot set its timeout ({e.strerror}): not a "
                             "watchdog device?") from None
        self.timeout_s = struct.unpack("i", got)[0]
        if self.timeout_s > timeout_s:  # the device rounds up: too late for our lease
            self.disarm()
            raise RemusError(f"watchdog {path}: timeout {self.timeout_s} s, more than the "
                             f"{timeout_s} s the lease allows")
        self.path, self.armed = path, True
        log.info("watchdog %s armed: %d s", path, self.timeout_s)

    def pet(self) -> None:
        if self.armed:
            os.write(self.fd, b"\0")

    def disarm(self) -> None:
        """The magic close: the host no longer needs resetting."""
        if getattr(self, "armed", True) and self.fd >= 0:
            try:
                os.write(self.fd, b"V")
            finally:
                os.close(self.fd)
                self.fd, self.armed = -1, False
