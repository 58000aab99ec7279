"""The stage boundary of the epoch pipeline: raw pages in, encoded frames out.

Runs in the sender thread, after the VM has resumed. Compression (ASC) and read tracking (RT)
plug in here: they change how PAGES frames encode pages; the standby's decoding counterpart is
`store.add_frame`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from remusdb.checkpoint import wire
from remusdb.checkpoint.stream import PageSet


def epoch_frames(number: int, pages: PageSet, devices: bytes,
                 digests: np.ndarray | None = None) -> Iterator[list]:
    """Frames of one epoch: PAGES (≤ PAGES_PER_FRAME each), ZEROS, DEVICES, [VERIFY], COMMIT."""
    rows, (zb, zi, zf) = pages.latest()
    block, index, data = pages.view()
    for k in range(0, len(rows), wire.PAGES_PER_FRAME):
        r = rows[k : k + wire.PAGES_PER_FRAME]
        yield wire.encode(wire.Kind.PAGES, number, wire.pack_pages(block[r], index[r], data[r]))
    step = wire.MAX_PAYLOAD // 16
    for k in range(0, len(zi), step):
        yield wire.encode(wire.Kind.ZEROS, number, wire.pack_zeros(
            zb[k : k + step], zi[k : k + step], zf[k : k + step]))
    yield wire.encode(wire.Kind.DEVICES, number, devices)
    if digests is not None:
        yield wire.encode(wire.Kind.VERIFY, number, digests.astype(">u8").tobytes())
    yield wire.encode_json(wire.Kind.COMMIT, number, {
        "pages": int(len(rows)), "zeros": int(len(zi)), "devices": len(devices)})
