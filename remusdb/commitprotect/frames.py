"""Ethernet frames as the net relay sees them: the stream netdev's framing, and the two facts
commit protection needs from a frame — is it marked unprotected (its DSCP), and which flow is it.

Pure functions over a buffer and an offset, so the relay classifies in place without copying.
"""

from __future__ import annotations

import struct

LENGTH = struct.Struct(">I")  # QEMU's -netdev stream: each frame preceded by its length
MAX_FRAME = 65_536 + 18  # a jumbo frame with its Ethernet header; anything longer is a lie

_IPV4, _IPV6 = b"\x08\x00", b"\x86\xdd"
_PORTS = (6, 17, 132)  # TCP, UDP, SCTP: the flow includes the ports


class FramingError(ValueError):
    pass


def dscp(buf, off: int, n: int) -> int:
    """The frame's DSCP; -1 for what is not IP (ARP and the like: never unprotected) and for IP
    fragments (only the first carries the ports, so a later one could not be ordered behind
    its flow's held frames)."""
    if n < 34:
        return -1
    hi, lo = buf[off + 12], buf[off + 13]  # the ethertype, without making a slice
    if hi == 0x08 and lo == 0x00:
        if (buf[off + 20] & 0x3F) or buf[off + 21] or (buf[off + 14] & 0x0F) < 5:
            return -1  # MF set or an offset: a fragment; or a broken header
        return buf[off + 15] >> 2
    if hi == 0x86 and lo == 0xDD and n >= 54:
        return ((buf[off + 14] & 0x0F) << 4 | buf[off + 15] >> 4) >> 2
    return -1


def flow(buf, off: int, n: int) -> bytes | None:
    """The frame's flow: addresses, protocol and (TCP, UDP, SCTP) ports; None if not IP.
    Only computed when needed: it is the one allocation on the classification path."""
    if n < 34:
        return None
    ethertype = buf[off + 12:off + 14]
    if ethertype == _IPV4:
        proto, a, b, l4 = buf[off + 23], off + 26, off + 34, off + 14 + (buf[off + 14] & 0x0F) * 4
    elif ethertype == _IPV6 and n >= 54:
        # an extension header here hides the ports: the flow is then the addresses alone
        proto, a, b, l4 = buf[off + 20], off + 22, off + 54, off + 54
    else:
        return None
    if proto in _PORTS and l4 + 4 <= off + n:
        return bytes(buf[a:b]) + bytes(buf[l4:l4 + 4]) + bytes((proto,))
    return bytes(buf[a:b]) + bytes((proto,))


def split(buf, start: int, end: int) -> tuple[list[tuple[int, int]], int]:
    """Complete frames in buf[start:end] as (offset, length), and where the incomplete rest
    begins. A length beyond MAX_FRAME means the stream is not QEMU's framing."""
    frames = []
    off = start
    while end - off >= 4:
        (n,) = LENGTH.unpack_from(buf, off)
        if n > MAX_FRAME:
            raise FramingError(f"frame length {n} from the guest's stream (max {MAX_FRAME})")
        if end - off - 4 < n:
            break
        frames.append((off + 4, n))
        off += 4 + n
    return frames, off
