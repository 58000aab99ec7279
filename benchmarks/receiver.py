"""Primary daemon's page receiver: µs per dirty page, against reading the same bytes raw.

Feeds a synthetic checkpoint in QEMU 7.2's format (PAGE|CONTINUE records, as QEMU sends dirty
pages of one block) from another process through a socketpair into the real parser (what the
VM waits for), and as the baseline reads the same bytes the same way into one preallocated
buffer. The copy of the pages into one array, done after the VM resumed, is reported apart.
Run: .venv/bin/python benchmarks/receiver.py [pages]
"""

import os
import socket
import struct
import sys
import time

import numpy as np

from benchmarks._common import save
from remusdb.checkpoint import stream as s


def checkpoint_bytes(n: int) -> bytes:
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(200_000, n, replace=False))
    pages = rng.integers(0, 256, (n, s.PAGE_SIZE), np.uint8)
    hdr = (idx.astype(np.uint64) * s.PAGE_SIZE | (s.F_PAGE | s.F_CONTINUE)).astype(">u8")
    rec = np.empty((n, 8 + s.PAGE_SIZE), np.uint8)
    rec[:, :8] = hdr.view(np.uint8).reshape(n, 8)
    rec[:, 8:] = pages
    # First record names the block, like the first record of a QEMU stream.
    first = struct.pack(">Q", int(idx[0]) * s.PAGE_SIZE | s.F_PAGE) + b"\x04ram0" + \
        pages[0].tobytes()
    body = first + rec[1:].tobytes() + struct.pack(">Q", s.F_EOS)
    return (bytes([s.SECTION_END]) + struct.pack(">I", 2) + body + bytes([s.FOOTER])
            + struct.pack(">I", 2) + bytes([s.VM_EOF]))


class Producer:
    """A separate process writes the stream, as QEMU does (no GIL shared with the parser)."""

    def __init__(self, data: bytes):
        a, self.sock = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:
            self.sock.close()
            a.sendall(data)
            a.close()
            os._exit(0)
        a.close()

    def join(self) -> None:
        os.waitpid(self.pid, 0)
        self.sock.close()


POOL = s.BufferPool(4 << 20)  # steady state: epochs hand their buffers back


def parse(data: bytes, n: int) -> tuple[float, float, float]:
    p = Producer(data)
    ram = s.RamParser([s.RamBlock("ram0", 1 << 30)])
    pages = s.PageSet()
    r = s.Reader(p.sock, chunk=4 << 20, pool=POOL)
    t0, c0 = time.perf_counter(), time.process_time()
    s.read_live_state(r, ram, 2, pages)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    p.join()
    pages.own(POOL, r.detach())
    c1 = time.process_time()
    assert len(pages.view()[2]) == n  # the copy deferred until after the VM resumed
    return wall, cpu, time.process_time() - c1


def raw(data: bytes) -> tuple[float, float]:
    p = Producer(data)
    buf = bytearray(len(data))
    view = memoryview(buf)
    got = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while got < len(data):
        got += p.sock.recv_into(view[got:])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    p.join()
    return wall, cpu


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    data = checkpoint_bytes(n)
    runs = [(parse(data, n), raw(data)) for _ in range(7)]
    p = min(r[0][0] for r in runs), min(r[0][1] for r in runs), min(r[0][2] for r in runs)
    b = min(r[1][0] for r in runs), min(r[1][1] for r in runs)
    us = lambda t: round(t / n * 1e6, 3)  # noqa: E731
    result = {"pages": n, "parse_wall_us_per_page": us(p[0]), "parse_cpu_us_per_page": us(p[1]),
              "deferred_copy_cpu_us_per_page": us(p[2]),
              "raw_wall_us_per_page": us(b[0]), "raw_cpu_us_per_page": us(b[1]),
              "parse_vs_raw_wall": round(p[0] / b[0], 2), "parse_vs_raw_cpu": round(p[1] / b[1], 2)}
    print(f"receiver ({n} pages from another process): parse {us(p[0])} µs/page wall, "
          f"{us(p[1])} µs/page CPU; raw recv {us(b[0])} wall, {us(b[1])} CPU; "
          f"ratio {result['parse_vs_raw_wall']}x wall, {result['parse_vs_raw_cpu']}x CPU; "
          f"after resume: {us(p[2])} µs/page to copy pages out")
    save("receiver", result)


if __name__ == "__main__":
    main()
