from pathlib import Path

import pytest

from remusdb.hypervisor import qemu
from remusdb.hypervisor.qemu import GuestSpec, QemuError, RunFiles, build_command

INTEL = "processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\n"
PLAIN = "processor\t: 0\nflags\t\t: fpu vme de pse sse2 hypervisor\n"


def spec(**kw):
    base = dict(name="pg1", memory=(1 << 30) + 8192, vcpus=2, accel="tcg", cpu="qemu64",
                kernel=Path("/img/vmlinuz"), initrd=Path("/img/initrd.img"),
                disk=Path("/run/x/disk.qcow2"), disk_format="qcow2", mac="52:54:00:01:02:03",
                ip="10.213.0.10/24", gateway="10.213.0.1")
    base.update(kw)
    return GuestSpec(**base)


def test_accel_auto_uses_kvm_only_with_vmx_or_svm(tmp_path):
    kvm = tmp_path / "kvm"
    kvm.write_text("")
    assert qemu.resolve_accel("auto", INTEL, str(kvm)) == "kvm"
    assert qemu.resolve_accel("auto", PLAIN, str(kvm)) == "tcg"  # paravirtual KVM: no vmx/svm
    assert qemu.resolve_accel("auto", INTEL, str(tmp_path / "none")) == "tcg"
    assert qemu.resolve_accel("tcg", INTEL, str(kvm)) == "tcg"
    with pytest.raises(QemuError, match="accel = 'kvm' but"):
        qemu.resolve_accel("kvm", INTEL, str(tmp_path / "none"))


def test_command_line_shared_ram_and_devices():
    files = RunFiles(Path("/run/x"))
    cmd = build_command(spec(), files)
    joined = " ".join(cmd)
    assert "-daemonize" not in cmd
    assert ("memory-backend-file,id=ram0,size=1048584K,mem-path=/run/x/ram,share=on") in joined
    assert cmd[cmd.index("-m") + 1] == "1048584K"
    assert cmd[cmd.index("-accel") + 1] == "tcg,thread=multi"
    assert "virtio-blk-pci,drive=disk0" in cmd
    assert "tap,id=net0,ifname=tap0,script=no,downscript=no" in cmd
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:01:02:03" in cmd
    assert "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0" in cmd
    assert cmd[cmd.index("-qmp") + 1] == "unix:/run/x/qmp.sock,server=on,wait=off"
    append = cmd[cmd.index("-append") + 1]
    assert "init=/sbin/remusdb-init" in append and "remusdb.ip=10.213.0.10/24" in append


def test_command_line_variants():
    files = RunFiles(Path("/run/x"))
    kvm = build_command(spec(accel="kvm", init="systemd"), files, incoming="defer")
    assert kvm[kvm.index("-accel") + 1] == "kvm"
    assert "init=" not in kvm[kvm.index("-append") + 1]
    assert kvm[-3:] == ["-S", "-incoming", "defer"]  # paused until `cont`, whatever ran
    assert "-S" not in build_command(spec(), files)
    ns = build_command(spec(netns="rdb1-primary"), files)
    assert ns[:3] == ["nsenter", "--net=/run/netns/rdb1-primary", "--"]
    st = build_command(spec(network="stream", stream_socket=Path("/run/x/net.sock")), files)
    assert "stream,id=net0,server=on,addr.type=unix,addr.path=/run/x/net.sock" in st
    with pytest.raises(QemuError):
        build_command(spec(network="stream"), files)


def test_fingerprint_ignores_paths_but_not_shape():
    a, b = spec(), spec(disk=Path("/elsewhere/disk.qcow2"))
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != spec(memory=1 << 30).fingerprint()


def test_tcg_guest_keeps_the_tsc_as_its_clock():
    """Under TCG the guest kernel calls its TSC unsynchronized and falls back to the HPET,
    whose every read is an MMIO exit under the big lock; TCG's TSC is one host counter, so
    it is reliable. Under KVM the guest picks kvm-clock itself."""
    files = RunFiles(Path("/run/x"))
    tcg = build_command(spec(), files)
    assert "tsc=reliable" in tcg[tcg.index("-append") + 1].split()
    kvm = build_command(spec(accel="kvm"), files)
    assert "tsc=reliable" not in kvm[kvm.index("-append") + 1]
    # a snapshot of a guest booted with another command line is another snapshot
    assert spec().fingerprint() != spec(extra_append="quiet").fingerprint()
    assert spec().fingerprint()["cmdline"] == spec().kernel_cmdline()


def test_qemu_threads_are_named():
    """Per-thread CPU (vCPUs apart from the main loop and the migration thread)."""
    cmd = build_command(spec(), RunFiles(Path("/run/x")))
    assert cmd[cmd.index("-name") + 1] == "pg1,debug-threads=on"
