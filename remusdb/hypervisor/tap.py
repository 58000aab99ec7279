"""The VM's tap: the protected VM's traffic leaves through a tap on a bridge of its host.

A product module (the daemons create the tap before QEMU or the relay open it by name); the lab's
namespaces-as-hosts reuse it for their guests.
"""

from __future__ import annotations

from pyroute2 import IPRoute

from remusdb.errors import RemusError


class NetError(RemusError):
    pass


def ensure_tap(ifname: str, bridge: str) -> None:
    """A tap on `bridge` in this process's namespace (QEMU opens it by name), created if absent."""
    with IPRoute() as ipr:
        br = ipr.link_lookup(ifname=bridge)
        if not br:
            raise NetError(f"bridge {bridge} not found: create it or set vm.bridge")
        if not ipr.link_lookup(ifname=ifname):
            ipr.link("add", ifname=ifname, kind="tuntap", mode="tap")
        idx = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=idx, master=br[0], state="up")
