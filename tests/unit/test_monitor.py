"""QMP errors reach callers as MonitorError with QEMU's own text (a real QEMU, no guest)."""

import shutil
import subprocess
import time

import pytest

from remusdb.hypervisor.monitor import Monitor, MonitorError
from remusdb.hypervisor.qemu import QEMU_BINARY

pytestmark = pytest.mark.skipif(shutil.which(QEMU_BINARY) is None, reason="no QEMU binary")


def test_a_failed_command_is_a_monitor_error_with_qemus_text(tmp_path):
    sock = tmp_path / "qmp.sock"
    qemu = subprocess.Popen([QEMU_BINARY, "-M", "none", "-nodefaults", "-display", "none",
                             "-qmp", f"unix:{sock},server=on,wait=off"])
    mon = Monitor(sock)
    try:
        mon.connect(time.monotonic() + 10)
        assert mon.status() in ("prelaunch", "paused", "running")
        with pytest.raises(MonitorError, match="QMP no-such-command failed: .*has not been found"):
            mon.execute("no-such-command")
        assert mon.status()  # the connection survives a failed command
    finally:
        mon.close()
        qemu.kill()
        qemu.wait()
