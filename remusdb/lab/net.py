"""Hosts as network namespaces on one machine: primary, standby, client, joined by a switch.

Each host namespace has a bridge `br0` holding its uplink (a veth to the switch namespace) and its
address; a guest's tap joins that bridge, so the VM sits on the same L2 segment as every host and
its IP can move from the primary to the standby at failover. Everything is created under a
per-process prefix and removed on exit, even after a failure; stale labs of dead processes are
swept on the next start.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import os
import re
from dataclasses import dataclass, field

from pyroute2 import IPRoute, NetNS, netns

from remusdb.config import Config
from remusdb.hypervisor.tap import NetError, ensure_tap

PREFIX = "rdb"
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)-")
# The guest's address in the lab: the config's default, on the lab's subnet, so a VM started
# from a default Config is reachable from every lab host.
VM_IP = Config().vm.address


@dataclass
class Host:
    name: str
    netns: str
    address: str  # with prefix


@dataclass
class Lab:
    """A switch and hosts; use as a context manager."""

    hosts: tuple[str, ...] = ("primary", "standby", "client")
    subnet: str = "10.213.0.0/24"
    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}")
    members: dict[str, Host] = field(default_factory=dict)

    @property
    def switch_ns(self) -> str:
        return f"{self.tag}-sw"

    def ns(self, host: str) -> str:
        return f"{self.tag}-{host}"

    @property
    def gateway(self) -> str:
        """The first host's address: what a guest uses as its default route."""
        return self.members[self.hosts[0]].address.split("/")[0]

    def __enter__(self) -> Lab:
        if os.geteuid() != 0:
            raise NetError("network namespaces, bridges and taps need root")
        sweep_stale()
        atexit.register(self.close)
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _create(self) -> None:
        net = ipaddress.IPv4Network(self.subnet)
        netns.create(self.switch_ns)
        with NetNS(self.switch_ns) as sw:
            sw.link("add", ifname="sw", kind="bridge")
            sw.link("set", index=sw.link_lookup(ifname="lo")[0], state="up")
            sw.link("set", index=sw.link_lookup(ifname="sw")[0], state="up")
        for i, host in enumerate(self.hosts, start=1):
            name = self.ns(host)
            netns.create(name)
            addr = f"{net.network_address + i}/{net.prefixlen}"
            with NetNS(self.switch_ns) as sw:
                sw.link("add", ifname=host[:15], kind="veth",
                        peer={"ifname": "eth0", "net_ns_fd": name})
                idx = sw.link_lookup(ifname=host[:15])[0]
                sw.link("set", index=idx, master=sw.link_lookup(ifname="sw")[0], state="up")
            with NetNS(name) as h:
                h.link("add", ifname="br0", kind="bridge")
                br = h.link_lookup(ifname="br0")[0]
                eth = h.link_lookup(ifname="eth0")[0]
                h.link("set", index=eth, master=br, state="up")
                h.link("set", index=br, state="up")
                h.link("set", index=h.link_lookup(ifname="lo")[0], state="up")
                ip, plen = addr.split("/")
                h.addr("add", index=br, address=ip, prefixlen=int(plen))
            self.members[host] = Host(host, name, addr)

    def add_tap(self, host: str, ifname: str = "tap0") -> str:
        """A tap on the host's bridge, for a QEMU started inside that host's namespace."""
        with self.inside(host):
            ensure_tap(ifname, "br0")
        return ifname

    @contextlib.contextmanager
    def inside(self, host: str):
        """Run the block in the host's namespace: sockets made here stay there."""
        netns.pushns(self.ns(host))
        try:
            yield
        finally:
            netns.popns()

    def close(self) -> None:
        for name in [self.switch_ns, *(self.ns(h) for h in self.hosts)]:
            _remove_ns(name)
        self.members.clear()
        atexit.unregister(self.close)


def _remove_ns(name: str) -> None:
    if name in netns.listnetns():
        try:
            netns.remove(name)
        except OSError as e:
            raise NetError(f"cannot remove network namespace {name}: {e}") from None


def sweep_stale() -> list[str]:
    """Remove namespaces left by labs whose process is gone (a crash or kill -9)."""
    removed = []
    for name in netns.listnetns():
        m = _NAME_RE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _remove_ns(name)
            removed.append(name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def root_links() -> list[str]:
    with IPRoute() as ipr:
        return [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
