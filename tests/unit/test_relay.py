"""The net relay on real sockets and a real tap (in a namespace of its own; root, no VM): what
the guest sends is held and released by epoch, a mark takes what the guest sent before it,
world→guest frames pass with QEMU's framing, and a stream that is not QEMU's stops the relay."""

import fcntl
import os
import socket
import struct
import subprocess
import time

import pytest
from pyroute2 import netns

from remusdb.commitprotect.outbuf import OutputBuffer
from remusdb.commitprotect.relay import (
    IFF_NO_PI,
    IFF_TAP,
    TUNSETIFF,
    TUNSETOFFLOAD,
    NetRelay,
    RelayError,
    open_tap,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
TAP = "rtest0"
IFF_VNET_HDR, TUN_F_CSUM = 0x4000, 0x01


def frame(tag: int) -> bytes:
    # broadcast destination: the tap accepts it whatever its MAC; a local ethertype
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + struct.pack(">I", tag) + \
        bytes(46)


def framed(f: bytes) -> bytes:
    return struct.pack(">I", len(f)) + f


@pytest.fixture
def tapns():
    name = f"rdbt{os.getpid()}-relay"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "tuntap", "add", TAP, "mode", "tap"], check=True)
        subprocess.run(["ip", "-n", name, "link", "set", TAP, "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name])


class Rig:
    """The relay between a socketpair (QEMU's end is `guest`) and the tap; `world` is a packet
    socket on the tap: it reads what the relay wrote and sends what the guest should get."""

    def __init__(self, ns: str, cp: bool = False):
        netns.pushns(ns)
        try:
            fd = open_tap(TAP)
            self.world = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88B5))
            self.world.bind((TAP, 0))
        finally:
            netns.popns()
        self.world.settimeout(0.3)
        self.guest, qemu_side = socket.socketpair()
        qemu_side.setblocking(False)
        self.guest.settimeout(2)
        self.relay = NetRelay(qemu_side, fd, OutputBuffer(cp, 11)).start()

    def seen(self) -> list[int]:
        """Tags of the frames that reached the world (the tap's side) since last asked."""
        tags = []
        while True:
            try:
                data, addr = self.world.recvfrom(2048)
            except TimeoutError:
                return tags
            if addr[2] != socket.PACKET_OUTGOING:  # written by the relay: incoming on the tap
                tags.append(struct.unpack_from(">I", data, 14)[0])

    def close(self):
        self.relay.close()
        self.world.close()
        self.guest.close()


@pytest.fixture
def rig(tapns):
    r = Rig(tapns)
    yield r
    r.close()


def test_guest_output_waits_for_its_epoch(rig):
    rig.guest.sendall(framed(frame(1)))
    assert rig.seen() == [1]  # not protecting yet
    rig.relay.mark(0)
    rig.guest.sendall(framed(frame(2)) + framed(frame(3)))
    assert rig.seen() == []
    rig.relay.mark(1)
    rig.guest.sendall(framed(frame(4)))
    rig.relay.release(0)
    assert rig.seen() == []
    rig.relay.release(1)
    assert rig.seen() == [2, 3]
    rig.relay.stop_protection()  # the standby is gone: what is held goes out
    assert rig.seen() == [4]
    assert rig.relay.error is None


def test_a_fenced_host_sends_nothing_not_even_released_output(rig):
    """The witness's lease ended (or a frozen host woke past it): the relay asks before every
    write, so nothing the guest sent reaches the world, held or not."""
    speaking = [True]
    rig.relay.speak = lambda: speaking[0]
    rig.guest.sendall(framed(frame(1)))
    assert rig.seen() == [1]
    rig.relay.mark(0)
    rig.guest.sendall(framed(frame(2)))
    speaking[0] = False
    rig.relay.release(0)  # acknowledged, but this host may no longer speak
    rig.guest.sendall(framed(frame(3)))
    rig.relay.stop_protection()
    assert rig.seen() == []
    assert rig.relay.stats["fenced_to_world"] == 2
    speaking[0] = True  # the key is ours again: new output flows
    rig.guest.sendall(framed(frame(4)))
    assert rig.seen() == [4]


def test_frames_split_anywhere_in_the_stream(rig):
    stream = b"".join(framed(frame(i)) for i in range(10, 20))
    for cut in (1, 3, 4, 5, 37, 64, 65):
        rig.guest.sendall(stream[:cut])
        time.sleep(0.01)
        rig.guest.sendall(stream[cut:])
        assert rig.seen() == list(range(10, 20)), cut


def test_mark_takes_what_the_guest_sent_before_the_pause(rig):
    rig.relay.mark(0)
    # The relay thread cannot run: the frame is still in the socket when the VM pauses.
    with rig.relay.lock:
        rig.guest.sendall(framed(frame(7)))
        time.sleep(0.05)
        rig.relay.mark(1)
    rig.guest.sendall(framed(frame(8)))
    time.sleep(0.05)
    rig.relay.release(1)
    assert rig.seen() == [7]  # epoch 1's; frame 8 belongs to epoch 2


def test_world_to_guest_in_qemu_framing(rig):
    for tag in (31, 32, 33):
        rig.world.send(frame(tag))
    got, tags, off = b"", [], 0
    while len(tags) < 3:
        got += rig.guest.recv(65536)
        while len(got) - off >= 4 and len(got) - off - 4 >= struct.unpack_from(">I", got, off)[0]:
            (n,) = struct.unpack_from(">I", got, off)
            f = got[off + 4:off + 4 + n]
            if f[12:14] == b"\x88\xb5":  # not the kernel's own (IPv6 router solicitations)
                tags.append(struct.unpack_from(">I", f, 14)[0])
            off += 4 + n
    assert tags == [31, 32, 33]


def test_checksums_are_whole_even_after_a_qemu_left_offloads_on(tapns):
    """QEMU's tap netdev turns checksum offload on and a persistent tap keeps it: the relay
    (no virtio-net header to carry "checksum pending") must turn it off, or the host's packets
    reach the guest with partial checksums and are dropped there."""
    netns.pushns(tapns)
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", TAP.encode(),
                                               IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM)  # what QEMU does
        os.close(fd)
    finally:
        netns.popns()
    ip = ["ip", "-n", tapns]
    subprocess.run([*ip, "addr", "add", "10.77.0.1/24", "dev", TAP], check=True)
    subprocess.run([*ip, "neigh", "add", "10.77.0.2", "lladdr", "02:00:00:00:00:02", "dev", TAP],
                   check=True)
    r = Rig(tapns)
    try:
        netns.pushns(tapns)
        try:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        finally:
            netns.popns()
        udp.sendto(b"payload" * 20, ("10.77.0.2", 9999))
        udp.close()
        got = b""
        while True:
            got += r.guest.recv(65536)
            (n,) = struct.unpack_from(">I", got)
            if len(got) >= 4 + n:
                f = got[4:4 + n]
                if f[12:14] == b"\x08\x00" and f[23] == 17:
                    break
                got = got[4 + n:]
        ip_hdr, udp_seg = f[14:34], f[34:]
        pseudo = ip_hdr[12:20] + struct.pack(">BBH", 0, 17, len(udp_seg))
        assert _csum(pseudo + udp_seg) == 0, "the UDP checksum is not complete"
    finally:
        r.close()


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f">{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return 0xFFFF - s


def test_a_stream_that_is_not_qemus_stops_the_relay(rig):
    rig.guest.sendall(struct.pack(">I", 1 << 24) + bytes(64))
    deadline = time.monotonic() + 5
    while rig.relay.error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert isinstance(rig.relay.error, RelayError) and "frame length" in str(rig.relay.error)
    rig.relay.mark(0)  # checkpoints go on (the VM has no network now; the status says so)
    assert rig.relay.summary()["error"].startswith("frame length")
