"""Hosts as namespaces: real netns, veth, bridges and taps (needs root, no VM)."""

import os
import socket
import subprocess

import pytest
from pyroute2 import netns

from remusdb.lab import net
from remusdb.lab.net import Lab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def test_hosts_reach_each_other_and_everything_is_removed():
    with Lab() as lab:
        names = {lab.switch_ns, *(h.netns for h in lab.members.values())}
        assert names <= set(netns.listnetns())
        tap = lab.add_tap("primary")
        links = subprocess.run(["ip", "-n", lab.ns("primary"), "-o", "link", "show", tap],
                               capture_output=True, text=True, check=True).stdout
        assert "master br0" in links
        with lab.inside("standby"):
            srv = socket.socket()
            srv.bind(("10.213.0.2", 0))
            srv.listen(1)
            port = srv.getsockname()[1]
        with lab.inside("client"):
            c = socket.create_connection(("10.213.0.2", port), timeout=5)
        peer, addr = srv.accept()
        assert addr[0] == "10.213.0.3"
        c.sendall(b"epoch")
        assert peer.recv(5) == b"epoch"
        for s in (c, peer, srv):
            s.close()
        # The root namespace cannot reach the lab: nothing leaks outside.
        assert not any(n.startswith("rdb") for n in net.root_links())
    assert not names & set(netns.listnetns())


def test_stale_lab_of_a_dead_process_is_swept():
    p = subprocess.Popen(["true"])
    p.wait()
    dead = p.pid
    name = f"{net.PREFIX}{dead}-primary"
    netns.create(name)
    try:
        assert name in net.sweep_stale()
        assert name not in netns.listnetns()
    finally:
        if name in netns.listnetns():
            netns.remove(name)


def test_the_lab_witness_partitions_and_dies_with_its_drill(tmp_path):
    """etcd on the witness host answers from the hosts, a cut silences it for one host only,
    and a drill process killed with -9 leaves no etcd behind."""
    import shutil
    import sys
    import time

    from remusdb.witness.etcd import EtcdWitness
    from remusdb.witness.rules import WitnessError
    if shutil.which("etcd") is None:
        pytest.skip("etcd-server not installed")
    script = tmp_path / "lab.py"
    script.write_text(f"""
import sys, time
from pathlib import Path
from remusdb.lab.net import Lab
from remusdb.lab.witness import LabWitness
with Lab(hosts=("primary", "standby", "witness")) as lab:
    with LabWitness(lab, Path({str(tmp_path)!r})) as w:
        print(w.proc.pid, lab.tag, flush=True)
        time.sleep(60)
""")
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             cwd=os.getcwd())
    etcd_pid, tag = child.stdout.readline().split()
    lab = Lab(hosts=("primary", "standby", "witness"), tag=tag)
    lab.members = {h: net.Host(h, lab.ns(h), f"10.213.0.{i}/24")
                   for i, h in enumerate(lab.hosts, start=1)}
    from remusdb.lab import witness as partition
    url = "http://10.213.0.3:2379"
    with lab.inside("primary"):
        EtcdWitness([url], "t", timeout=1).view()
    partition.cut(lab, "primary", ["witness"])
    with lab.inside("primary"), pytest.raises(WitnessError):
        EtcdWitness([url], "t", timeout=0.5).view()
    with lab.inside("standby"):
        EtcdWitness([url], "t", timeout=1).view()  # the other host still reaches it
    partition.heal(lab, "primary")
    with lab.inside("primary"):
        EtcdWitness([url], "t", timeout=1).view()
    child.kill()
    child.wait()
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{etcd_pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{etcd_pid}"), "etcd outlived its drill"
    net.sweep_stale()
