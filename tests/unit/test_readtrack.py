"""RT on the primary: references only to blocks whose content at the checkpoint equals the page,
with the disk server and QEMU's NBD client doing the reads and writes."""

import numpy as np
import pytest

from remusdb.disk.server import DiskServer
from remusdb.readtrack.index import BLOCK, BlockIndex
from remusdb.readtrack.tracker import ReadTracker
from tests.unit.test_disk import SIZE, qemu_io


@pytest.fixture
def rt(tmp_path):
    img = tmp_path / "disk.raw"
    with open(img, "wb") as f:
        f.truncate(SIZE)
        for b in range(8):  # blocks 0..7 hold 0x10..0x17
            f.seek(b * BLOCK)
            f.write(bytes([0x10 + b]) * BLOCK)
    s = DiskServer(img, tmp_path / "disk.sock")
    s.index = BlockIndex(SIZE, capacity=1000)
    s.start()
    yield s, ReadTracker(s.index, s.fd)
    s.close()


def pages(*fills):
    return np.stack([np.full(BLOCK, f, np.uint8) for f in fills])


def refs(tracker, data, generation):
    return tracker.references(data, np.arange(len(data)), generation).tolist()


def test_a_page_equal_to_a_block_read_and_unchanged_is_a_reference(rt):
    server, tracker = rt
    qemu_io(server, f"read -P 0x12 {2 * BLOCK} {BLOCK}", f"read -P 0x13 {3 * BLOCK} {BLOCK}")
    cut = server.index.generation
    assert refs(tracker, pages(0x12, 0x13, 0x55), cut) == [2, 3, -1]


def test_block_overwritten_after_the_read_sends_the_page_not_the_stale_reference(rt):
    """The direct-write race: a block read into a page, then the block overwritten on disk
    without touching the page, in this epoch (before the cut) or the next (after it)."""
    server, tracker = rt
    qemu_io(server, f"read -P 0x12 {2 * BLOCK} {BLOCK}", f"read -P 0x13 {3 * BLOCK} {BLOCK}")
    qemu_io(server, f"write -P 0x77 {2 * BLOCK} {BLOCK}")  # before the cut
    cut = server.index.generation
    qemu_io(server, f"write -P 0x78 {3 * BLOCK} {BLOCK}")  # after the cut
    assert refs(tracker, pages(0x12, 0x13), cut) == [-1, -1]


def test_content_written_after_the_cut_is_not_what_the_checkpoint_has(rt):
    """The page's content reaches the block only after the cut (the database writing its buffer
    out in the next epoch): the disk matches now, but at the checkpoint it held the old data."""
    server, tracker = rt
    cut = server.index.generation
    qemu_io(server, f"write -P 0x99 {5 * BLOCK} {BLOCK}")
    assert refs(tracker, pages(0x99), cut) == [-1]
    assert tracker.stats["rewritten"] == 1
    assert refs(tracker, pages(0x99), server.index.generation) == [5]  # next checkpoint: fine


def test_trim_invalidates_and_the_index_stays_bounded(rt):
    server, tracker = rt
    qemu_io(server, f"read -P 0x14 {4 * BLOCK} {BLOCK}", f"write -z {4 * BLOCK} {BLOCK}")
    assert refs(tracker, pages(0x14), server.index.generation) == [-1]
    small = BlockIndex(SIZE, capacity=3)
    for b in range(6):
        small.saw(b * BLOCK, bytes([b + 1]) * BLOCK)
    assert len(small.by_hash) == 3 and small.stats["evicted"] == 3
    assert small.indexed.sum() == 3
