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
