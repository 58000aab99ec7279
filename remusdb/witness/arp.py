"""The last guard before `cont` at failover: does anything answer ARP for the VM's address?

An RFC 5227 probe (sender address 0.0.0.0, so no neighbour cache learns from it) sent on the
standby's bridge; any reply from the VM's IP means another copy (or a stranger) holds it, and
the failover does not resume the VM. The frame codec is pure; `probe` does the I/O.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
import time

log = logging.getLogger(__name__)
ETH_P_ARP = 0x0806
_ARP = struct.Struct("!HHBBH6s4s6s4s")  # htype ptype hlen plen op sha spa tha tpa
BROADCAST = b"\xff" * 6


def probe_frame(src_mac: bytes, target_ip: str) -> bytes:
    """Ethernet + ARP request "who has target_ip", from 0.0.0.0 (a probe)."""
    eth = BROADCAST + src_mac + struct.pack("!H", ETH_P_ARP)
    arp = _ARP.pack(1, 0x0800, 6, 4, 1, src_mac, b"\0" * 4, b"\0" * 6,
                    ipaddress.IPv4Address(target_ip).packed)
    return eth + arp


def reply_from(frame: bytes, target_ip: str) -> str | None:
    """The MAC of an ARP frame that claims target_ip (a reply, or a probe or announcement
    of its own), else None."""
    if len(frame) < 14 + _ARP.size or frame[12:14] != b"\x08\x06":
        return None
    _, ptype, hlen, plen, op, sha, spa, _, _ = _ARP.unpack_from(frame, 14)
    if ptype != 0x0800 or hlen != 6 or plen != 4 or op not in (1, 2):
        return None
    if spa != ipaddress.IPv4Address(target_ip).packed:
        return None
    return ":".join(f"{b:02x}" for b in sha)


def probe(interface: str, ip: str, wait: float = 0.2, tries: int = 2) -> str | None:
    """The MAC of whatever answers for `ip` on `interface` within `wait` s of each try."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((interface, ETH_P_ARP))
        mac = s.getsockname()[4][:6]
        frame = probe_frame(mac, ip)
        for _ in range(tries):
            s.send(frame)
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                s.settimeout(left)
                try:
                    got = s.recv(2048)
                except TimeoutError:
                    break
                who = reply_from(got, ip)
                if who is not None:
                    return who
    return None
