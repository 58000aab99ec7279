"""Primary daemon's page receiver: µs per dirty page, against reading the same bytes raw.

Feeds a synthetic checkpoint in QEMU 7.2's format (PAGE|CONTINUE records, as QEMU sends dirty
pages of one block) through a socketpair into the real parser, and as the baseline reads the
same bytes from the same socketpair into a preallocated buffer. Run: .venv/bin/python
benchmarks/receiver.py [pages]
"""

import socket
import struct
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import save  # noqa: E402
from remusdb.checkpoint import stream as s  # noqa: E402


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


def feed(data: bytes):
    a, b = socket.socketpair()
    for sk in (a, b):
        sk.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    t = threading.Thread(target=lambda: (a.sendall(data), a.close()))
    t.start()
    return b, t


def parse(data: bytes, n: int) -> float:
    b, t = feed(data)
    ram = s.RamParser([s.RamBlock("ram0", 1 << 30)])
    pages = s.PageSet(capacity=n)
    r = s.Reader(b, chunk=4 << 20)
    t0 = time.perf_counter()
    s.read_live_state(r, ram, 2, pages)
    dt = time.perf_counter() - t0
    t.join()
    assert pages.pages == n
    return dt


def raw(data: bytes) -> float:
    b, t = feed(data)
    buf = bytearray(len(data))
    view = memoryview(buf)
    got = 0
    t0 = time.perf_counter()
    while got < len(data):
        got += b.recv_into(view[got:])
    dt = time.perf_counter() - t0
    t.join()
    return dt


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    data = checkpoint_bytes(n)
    runs = [(parse(data, n), raw(data)) for _ in range(5)]
    p = min(r[0] for r in runs)
    b = min(r[1] for r in runs)
    result = {"pages": n, "parse_us_per_page": round(p / n * 1e6, 3),
              "raw_recv_us_per_page": round(b / n * 1e6, 3), "parse_vs_raw": round(p / b, 2)}
    print(f"receiver: {result['parse_us_per_page']} µs/page parsed, "
          f"{result['raw_recv_us_per_page']} µs/page raw recv "
          f"(ratio {result['parse_vs_raw']}x), {n} pages")
    save("receiver", result)


if __name__ == "__main__":
    main()
