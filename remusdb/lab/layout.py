"""Where a lab run's files are, named once: tests, benchmarks and drills ask a `RunLayout`
instead of spelling paths like `run / "pg1/primary/primary.status.json"`.

The daemons' directories are the product's rule (`paths.role_dir`: `<run>/<vm>/<role>`,
each daemon writing its status document's file there), so they are computed by it; the
config, the logs and the traces are the lab's own choice, made here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from remusdb import paths
from remusdb.checkpoint.status import NodeStatus, PrimaryStatus, StandbyStatus, StatusDoc
from remusdb.hypervisor.qemu import RunFiles

VM_NAME = "pg1"  # the protected VM of every lab run


@dataclass(frozen=True)
class RunLayout:
    root: Path
    vm: str = VM_NAME

    @property
    def config(self) -> Path:
        return self.root / "vm.toml"

    def role_dir(self, role: str) -> Path:
        """The daemon's directory (`remusdb protect|standby --run-dir` unset: vm.run_dir)."""
        return paths.role_dir(self.vm, role, str(self.root))

    def status(self, role: str) -> Path:
        return self.status_at(role, role)

    def status_at(self, host: str, doc: str) -> Path:
        """The status file `doc` (node, primary or standby) written on `host`: after a
        failover the standby host's node writes a primary's status too."""
        docs: dict[str, type[StatusDoc]] = {"primary": PrimaryStatus, "standby": StandbyStatus,
                                            "node": NodeStatus}
        return self.role_dir(host) / docs[doc].file_name()

    def log(self, role: str) -> Path:
        """The daemon's stdout and stderr."""
        return self.root / f"{role}.log"

    @property
    def primary_status(self) -> Path:
        return self.status("primary")

    @property
    def standby_status(self) -> Path:
        return self.status("standby")

    @property
    def primary_trace(self) -> Path:
        """`remusdb protect --trace`: one line per checkpoint."""
        return self.root / "checkpoints.csv"

    @property
    def net_trace(self) -> Path:
        """`remusdb protect --net-trace`: one line per frame the guest sends."""
        return self.root / "net.csv"

    @property
    def standby_trace(self) -> Path:
        """`remusdb standby --trace`: one line per committed epoch."""
        return self.root / "commits.csv"

    @property
    def primary_vm(self) -> RunFiles:
        """QEMU's files (agent socket, pid…) of the VM the primary runs: in its role dir."""
        return RunFiles(self.role_dir("primary"))

    @property
    def standby_vm(self) -> RunFiles:
        """QEMU's files of the VM the standby resumed at failover."""
        return RunFiles(self.role_dir("standby") / "vm")


def mount_tmpfs(directory: Path, size: int) -> None:
    """A tmpfs of `size` bytes at `directory` (root): a disk that can fill up on purpose."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                    str(directory)], check=True, capture_output=True)


def unmount(directory: Path) -> None:
    subprocess.run(["umount", "-l", str(directory)], check=False, capture_output=True)


class KeptOnFailure:
    """A drill's run directory in RAM: removed when the drill passed (`ok` set), kept and
    named when it did not, so its daemons' logs can be read."""

    def __init__(self, prefix: str, say: Callable[[str], None]):
        self.prefix, self.say = prefix, say
        self.ok = False
        self.mounts: list[Path] = []

    def __enter__(self) -> KeptOnFailure:
        self.base = Path(tempfile.mkdtemp(prefix=self.prefix, dir="/dev/shm"))
        return self

    def mount(self, directory: Path, size: int) -> None:
        """A filesystem of its own at `directory`, for a drill that fills one host's disk;
        unmounted at the end whatever happened (the logs are not in it)."""
        mount_tmpfs(directory, size)
        self.mounts.append(directory)

    def __exit__(self, *exc) -> None:
        for d in reversed(self.mounts):
            unmount(d)
        if self.ok and not os.environ.get("REMUSDB_KEEP_RUN"):  # debugging: keep it all
            shutil.rmtree(self.base, ignore_errors=True)
        else:
            self.say(f"kept the drill's files: {self.base}")
