"""Start, stop, save and restore a QEMU guest whose RAM lives in a shared file.

Guest RAM is a `memory-backend-file` with share=on so the checkpoint engine (and, at failover,
a new QEMU) can map the same bytes. QEMU is never daemonized: `-daemonize` breaks `migrate exec:`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from remusdb.errors import RemusError
from remusdb.hypervisor.agent import GuestAgent
from remusdb.hypervisor.monitor import Monitor

QEMU_BINARY = "qemu-system-x86_64"
GUEST_AGENT_PORT = "org.qemu.guest_agent.0"
RAM_BACKEND = "ram0"  # also the RAM block's name in the migration stream


class QemuError(RemusError):
    pass


def cpu_has_virt_extensions(cpuinfo: str | None = None) -> bool:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"vmx", "svm"})
    return False


def resolve_accel(accel: str, cpuinfo: str | None = None, kvm_dev: str = "/dev/kvm") -> str:
    """auto -> kvm only where the CPU advertises vmx/svm and /dev/kvm opens, else tcg.

    A paravirtual /dev/kvm without vmx/svm (as on these build machines) cannot run a stock Linux
    guest, so its mere presence is not enough.
    """
    kvm_ok = os.access(kvm_dev, os.R_OK | os.W_OK)
    if accel == "tcg":
        return "tcg"
    if accel == "kvm":
        if not kvm_ok:
            raise QemuError(f"accel = 'kvm' but {kvm_dev} is missing or not accessible")
        return "kvm"
    if accel == "auto":
        return "kvm" if kvm_ok and cpu_has_virt_extensions(cpuinfo) else "tcg"
    raise QemuError(f"unknown accelerator {accel!r}")


@dataclass
class GuestSpec:
    """Everything that shapes the QEMU command line of one guest.

    Two guests with equal specs (paths aside) are migration-compatible, which snapshots and
    failover rely on; `fingerprint()` names that compatibility class.
    """

    name: str
    memory: int  # bytes
    vcpus: int
    accel: str  # resolved: kvm | tcg
    cpu: str
    kernel: Path
    initrd: Path
    disk: Path
    disk_format: str  # raw | qcow2 | nbd (disk: the disk server's unix socket)
    mac: str
    ip: str  # with prefix
    gateway: str
    init: str = "fast"  # fast | systemd
    network: str = "tap"  # tap | stream | none
    tap: str = "tap0"
    stream_socket: Path | None = None
    netns: str | None = None  # run QEMU inside this network namespace
    extra_append: str = ""
    extra_args: list[str] = field(default_factory=list)
    binary: str = QEMU_BINARY  # the patched build under TCG (see vm.qemu_binary)
    ram_file: Path | None = None  # map this RAM image (failover) instead of a fresh file

    def fingerprint(self) -> dict:
        return {
            "memory": self.memory, "vcpus": self.vcpus, "accel": self.accel, "cpu": self.cpu,
            "kernel": str(self.kernel), "initrd": str(self.initrd), "mac": self.mac,
            "ip": self.ip, "gateway": self.gateway, "init": self.init, "network": self.network,
            "extra_append": self.extra_append, "extra_args": self.extra_args,
            "cmdline": self.kernel_cmdline(),  # a snapshot is of a guest booted with it
        }

    def kernel_cmdline(self) -> str:
        parts = ["root=/dev/vda", "rw", "console=ttyS0", "net.ifnames=0", "panic=-1",
                 f"remusdb.ip={self.ip}", f"remusdb.gw={self.gateway}"]
        if self.init == "fast":
            parts.append("init=/sbin/remusdb-init")
        if self.accel == "tcg":
            parts.append("tsc=reliable")
        if self.extra_append:
            parts.append(self.extra_append)
        return " ".join(parts)


@dataclass
class RunFiles:
    """The per-instance files of one running QEMU."""

    dir: Path

    @property
    def ram(self) -> Path:
        return self.dir / "ram"

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def observer(self) -> Path:
        """A second QMP monitor for watchers (the drills' second-copy detector, monitoring):
        the daemon keeps the first, and QEMU serves one client per monitor."""
        return self.dir / "observe.sock"

    @property
    def agent(self) -> Path:
        return self.dir / "qga.sock"

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def pid(self) -> Path:
        return self.dir / "qemu.pid"


def build_command(spec: GuestSpec, files: RunFiles, incoming: str | None = None) -> list[str]:
    accel = ["-accel", "kvm"] if spec.accel == "kvm" else ["-accel", "tcg,thread=multi"]
    if spec.network == "tap":
        netdev = f"tap,id=net0,ifname={spec.tap},script=no,downscript=no"
    elif spec.network == "stream":
        if spec.stream_socket is None:
            raise QemuError("network = 'stream' needs a stream socket path")
        # QEMU is the server so the net relay can restart without touching the VM.
        netdev = (f"stream,id=net0,server=on,addr.type=unix,"
                  f"addr.path={spec.stream_socket}")
    else:
        netdev = None
    if spec.disk_format == "nbd":  # served by remusdb's disk server (disk/server.py)
        drive = (f"file.driver=nbd,file.server.type=unix,file.server.path={spec.disk},"
                 f"file.export=disk,format=raw")
    else:
        drive = f"file={spec.disk},format={spec.disk_format}"
    cmd = [
        # debug-threads: vCPU and I/O threads carry names (CPU 0/TCG, ...) for per-thread CPU
        spec.binary, "-name", f"{spec.name},debug-threads=on", "-nodefaults",
        "-no-user-config", "-display", "none",
        "-machine", f"pc,memory-backend={RAM_BACKEND}", *accel, "-cpu", spec.cpu,
        "-smp", str(spec.vcpus), "-m", f"{spec.memory // 1024}K",
        "-object", (f"memory-backend-file,id={RAM_BACKEND},size={spec.memory // 1024}K,"
                    f"mem-path={spec.ram_file or files.ram},share=on"),
        "-kernel", str(spec.kernel), "-initrd", str(spec.initrd),
        "-append", spec.kernel_cmdline(),
        "-drive", f"{drive},if=none,id=disk0,cache=writeback",
        "-device", "virtio-blk-pci,drive=disk0",
        "-chardev", f"socket,id=qga0,path={files.agent},server=on,wait=off",
        "-device", "virtio-serial-pci",
        "-device", f"virtserialport,chardev=qga0,name={GUEST_AGENT_PORT}",
        "-chardev", f"file,id=serial0,path={files.serial_log}",
        "-serial", "chardev:serial0",
        "-qmp", f"unix:{files.qmp},server=on,wait=off",
        "-qmp", f"unix:{files.observer},server=on,wait=off",
    ]
    if netdev:
        cmd += ["-netdev", netdev, "-device", f"virtio-net-pci,netdev=net0,mac={spec.mac}"]
    if incoming:
        # -S: paused once the state is loaded, until `cont`. Without it QEMU starts the VM by
        # itself (the stream says it ran), before the failover has readied its relay, checked
        # ARP and marked the store consumed.
        cmd += ["-S", "-incoming", incoming]
    cmd += spec.extra_args
    if spec.netns:
        cmd = ["nsenter", f"--net=/run/netns/{spec.netns}", "--", *cmd]
    return cmd


def die_with_parent() -> None:
    """For a child that must not outlive the process (the thread) that started it."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class QemuGuest:
    """One QEMU process: start it, talk to it (QMP, guest agent), stop or kill it."""

    def __init__(self, spec: GuestSpec, run_dir: Path, die_with_parent: bool = True):
        """die_with_parent: QEMU gets SIGKILL when the thread that started it dies, so a dead
        HA daemon never leaves its VM running behind the standby's back (fencing), and a test
        killed by a timeout leaves no QEMU behind. Start guests from long-lived threads."""
        self.spec = spec
        self.die_with_parent = die_with_parent
        self.files = RunFiles(Path(run_dir))
        self.proc: subprocess.Popen | None = None
        self.monitor: Monitor | None = None
        self.agent = GuestAgent(self.files.agent)

    def start(self, incoming: str | None = None, timeout: float = 30.0) -> None:
        if shutil.which(self.spec.binary) is None:
            raise QemuError(f"{self.spec.binary} not found (run 'make deps')")
        self.files.dir.mkdir(parents=True, exist_ok=True)
        # memory-backend-file does not clear an existing file: never map a stale guest's RAM.
        stale = [self.files.qmp, self.files.observer, self.files.agent, self.files.serial_log]
        if self.spec.ram_file is None:
            stale.append(self.files.ram)
        for p in stale:
            p.unlink(missing_ok=True)
        cmd = build_command(self.spec, self.files, incoming)
        (self.files.dir / "cmdline").write_text(shlex.join(cmd) + "\n")
        log = open(self.files.qemu_log, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=die_with_parent if self.die_with_parent
                                     else None)
        log.close()
        self.files.pid.write_text(f"{self.proc.pid}\n")
        self.monitor = Monitor(self.files.qmp)
        deadline = time.monotonic() + timeout
        try:
            while not self.files.qmp.exists():
                if self.proc.poll() is not None:
                    raise QemuError(f"QEMU exited at start: {self._log_tail()}")
                if time.monotonic() > deadline:
                    raise QemuError("QEMU did not create its QMP socket")
                time.sleep(0.02)
            self.monitor.connect(deadline)
        except BaseException:
            self.kill()
            raise

    def _log_tail(self) -> str:
        try:
            lines = self.files.qemu_log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return lines[-1] if lines else "no output"

    def qmp(self) -> Monitor:
        """The monitor of a started guest."""
        monitor = self.monitor
        assert monitor is not None, "QEMU was not started"  # start() sets it first
        return monitor

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def wait_agent(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.agent.wait_ready(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
                return
            except RemusError:
                if not self.running:
                    raise QemuError(f"QEMU exited: {self._log_tail()}") from None
                if time.monotonic() > deadline:
                    raise

    def stop(self, timeout: float = 10.0) -> None:
        """Quit QEMU over QMP (the guest is not shut down: its state is either saved or moot)."""
        proc, monitor = self.proc, self.monitor
        if proc is not None and proc.poll() is None and monitor is not None:  # running
            try:
                monitor.quit()
            except Exception:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL, as a host failure would; also reaps the process."""
        self.agent.close()
        if self.monitor is not None:
            self.monitor.close()
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait()

    def release_ram(self) -> None:
        self.files.ram.unlink(missing_ok=True)

    # Whole-VM save/restore through a migration stream in a file.
    def save(self, state_file: Path, timeout: float = 300.0) -> None:
        tmp = Path(f"{state_file}.partial")
        tmp.unlink(missing_ok=True)
        monitor = self.qmp()
        monitor.migrate(f"exec:cat > {shlex.quote(str(tmp))}")
        monitor.wait_migration(timeout)
        tmp.rename(state_file)

    def restore(self, state_file: Path, timeout: float = 120.0) -> None:
        """Start from a saved state and run; the caller's spec must match the saved guest's."""
        if not Path(state_file).is_file():
            raise QemuError(f"saved VM state not found: {state_file}")
        self.start(incoming="defer")
        monitor = self.qmp()
        monitor.migrate_incoming(f"exec:cat {shlex.quote(str(state_file))}")
        monitor.wait_status({"paused", "postmigrate", "running"}, timeout)
        monitor.wait_migration(timeout)
        monitor.cont()
