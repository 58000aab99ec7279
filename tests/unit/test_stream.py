import os
import socket
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remusdb.checkpoint import stream as s
from remusdb.checkpoint.colo import ColoEndpoint
from tests.unit import colo_fixtures as fx

P = s.PAGE_SIZE


def page(seed):
    return np.random.default_rng(seed).integers(0, 256, P, np.uint8).tobytes()


def records_to_image(records, images):
    for name, index, payload in records:
        blk = images[name]
        blk[index] = np.frombuffer(payload, np.uint8) if isinstance(payload, bytes) else payload


def apply(pages, blocks, images):
    rows, zeros = pages.latest()
    blk, idx, data = pages.view()
    for r in rows:
        images[blocks[blk[r]].name][int(idx[r])] = data[r]
    for b, i, f in zip(*zeros, strict=True):
        images[blocks[b].name][int(i)] = f


def fresh():
    return {n: np.zeros((ln // P, P), np.uint8) for n, ln in fx.BLOCKS}


RECORDS = [("ram0", 0, page(0)), ("ram0", 1, page(1)), ("ram0", 2, 0), ("ram0", 3, page(3)),
           ("pc.bios", 0, page(4)), ("ram0", 63, page(5)), ("ram0", 5, 7)]


def test_initial_stream_parses_to_the_exact_image():
    data, _ = fx.initial_stream(RECORDS)
    init = s.read_initial(s.Reader(data=data))
    assert init.colo and init.config.machine == "pc-i440fx-7.2"
    assert [(b.name, b.length) for b in init.blocks] == fx.BLOCKS
    assert init.pages.pages == 5 and init.pages.zero_count == 2
    want, got = fresh(), fresh()
    records_to_image(RECORDS, want)
    apply(init.pages, init.blocks, got)
    for name in want:
        assert np.array_equal(want[name], got[name])
    assert init.devices.endswith(b"\x00") and init.devices[0] == s.SECTION_FULL
    assert [d["name"] for d in init.vmdesc["devices"]] == ["timer", "cpu", "cpu"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ram0", "pc.bios"]), st.integers(0, 63),
                          st.one_of(st.integers(0, 255), st.integers(0, 9999).map(page))),
                max_size=40),
       st.integers(1, 9000))
def test_any_record_mix_over_a_socket_in_any_chunking(records, chunk):
    records = [(n, i % (4 if n == "pc.bios" else 64), p) for n, i, p in records]
    data, last = fx.initial_stream(records[: len(records) // 2])
    ck, _ = fx.checkpoint_stream(records[len(records) // 2 :], last)
    a, b = socket.socketpair()

    a.settimeout(10)
    b.settimeout(10)

    def send():
        # Like QEMU: nothing after the VM description until CHECKPOINT_READY.
        for blob, reply in ((data, s.Colo.CHECKPOINT_READY), (ck, None)):
            for off in range(0, len(blob), chunk):
                a.sendall(blob[off : off + chunk])
            if reply is not None:
                assert a.recv(4) == s.message(reply)

    threading.Thread(target=send, daemon=True).start()
    ep = ColoEndpoint(b)
    init = ep.read_initial()
    ep.ready()
    want, got = fresh(), fresh()
    records_to_image(records, want)
    apply(init.pages, init.blocks, got)
    c = ep.next_checkpoint()
    apply(c.pages, init.blocks, got)
    assert c.devices == b"\x04devstate\x00"
    for name in want:
        assert np.array_equal(want[name], got[name])
    a.close()
    b.close()


def test_long_page_run_uses_bulk_path_and_is_exact():
    recs = [("ram0", i, page(i)) for i in range(64)]
    data, last = fx.initial_stream(recs[:1])
    ck, _ = fx.checkpoint_stream(recs, last)
    ram = s.RamParser()
    init = s.read_initial(s.Reader(data=data), ram)
    r = s.Reader(data=ck)
    s.read_message(r, s.Colo.CHECKPOINT_REQUEST)
    s.read_message(r, s.Colo.VMSTATE_SEND)
    pages = s.PageSet()
    s.read_live_state(r, ram, init.ram_section.section_id, pages)
    blk, idx, d = pages.view()
    assert list(idx) == list(range(64))
    assert all(d[i].tobytes() == recs[i][2] for i in range(64))


def test_a_page_record_cut_by_a_read_is_finished_and_parsed_in_bulk(monkeypatch):
    """Reads that end inside a page record (a socket delivers what it has): the parser reads
    on to that record's end and stays on the bulk path instead of parsing a record alone
    after every read; the pages come out exact either way."""
    recs = [("ram0", i, page(i)) for i in range(60)]
    data, last = fx.initial_stream(recs[:1])
    ck, _ = fx.checkpoint_stream(recs, last)
    ram = s.RamParser()
    init = s.read_initial(s.Reader(data=data), ram)
    class Reads:
        """A source whose every read brings 1.5 records (no fileno: no greedy reading)."""

        def __init__(self, data: bytes):
            self.data, self.at = data, 0

        def recv_into(self, buf) -> int:
            n = min(len(buf), 6156, len(self.data) - self.at)
            buf[:n] = self.data[self.at : self.at + n]
            self.at += n
            return n

    r = s.Reader(Reads(ck))
    s.read_message(r, s.Colo.CHECKPOINT_REQUEST)
    s.read_message(r, s.Colo.VMSTATE_SEND)
    words = []
    u64 = s.Reader.u64
    monkeypatch.setattr(s.Reader, "u64", lambda self: words.append(1) or u64(self))
    pages = s.PageSet()
    s.read_live_state(r, ram, init.ram_section.section_id, pages)
    _, idx, d = pages.view()
    assert list(idx) == list(range(60))
    assert all(d[i].tobytes() == recs[i][2] for i in range(60))
    # one record alone: the first (it names the block), then the end of the section
    assert len(words) <= 3, len(words)


@pytest.mark.parametrize("cut", [3, 20, 60, 200, -30, -1])
def test_truncated_initial_stream_is_a_clear_error(cut):
    data, _ = fx.initial_stream(RECORDS)
    with pytest.raises(s.StreamError):
        s.read_initial(s.Reader(data=data[:cut]), max_idle_reads=0)


def corrupt(data, old, new):
    assert old in data
    return data.replace(old, new, 1)


@pytest.mark.parametrize("mutate,match", [
    (lambda d: b"XXXX" + d[4:], "bad magic"),
    (lambda d: corrupt(d, bytes([s.FOOTER]), bytes([0x7D])), "bad section footer"),
    (lambda d: corrupt(d, b"\x07pc.bios", b"\x07pc.biox"), "names unknown block 'pc.bios'"),
    (lambda d: corrupt(d, b"\x05timer", b"\x05tim3r"), "missing from the initial stream"),
])
def test_corrupted_initial_stream_is_rejected(mutate, match):
    data, _ = fx.initial_stream(RECORDS)
    with pytest.raises(s.StreamError, match=match):
        s.read_initial(s.Reader(data=mutate(data)), max_idle_reads=0)


def live_state_after(initial, checkpoint):
    ram = s.RamParser()
    init = s.read_initial(s.Reader(data=initial), ram)
    r = s.Reader(data=checkpoint)
    s.read_message(r, s.Colo.CHECKPOINT_REQUEST)
    s.read_message(r, s.Colo.VMSTATE_SEND)
    s.read_live_state(r, ram, init.ram_section.section_id, s.PageSet())


def test_page_beyond_block_and_unknown_flags_are_rejected():
    data, last = fx.initial_stream(RECORDS)
    bad, _ = fx.checkpoint_stream([("pc.bios", 9, page(1))], last)
    with pytest.raises(s.StreamError, match="beyond the end of block 'pc.bios'"):
        live_state_after(data, bad)
    xb = s.message(s.Colo.CHECKPOINT_REQUEST) + s.message(s.Colo.VMSTATE_SEND) + bytes(
        [s.SECTION_END]) + (2).to_bytes(4, "big") + (s.F_XBZRLE | s.F_CONTINUE).to_bytes(8, "big")
    with pytest.raises(s.StreamError, match="XBZRLE"):
        live_state_after(data, xb)
    wrong_section = xb.replace(bytes([s.SECTION_END]) + (2).to_bytes(4, "big"),
                               bytes([s.SECTION_END]) + (5).to_bytes(4, "big"))
    with pytest.raises(s.StreamError, match="is not RAM"):
        live_state_after(data, wrong_section)


def test_unknown_colo_message():
    with pytest.raises(s.StreamError, match="unknown COLO message 99"):
        s.read_message(s.Reader(data=(99).to_bytes(4, "big")))
    with pytest.raises(s.StreamError, match="expected COLO VMSTATE_SEND"):
        s.read_message(s.Reader(data=s.message(s.Colo.CHECKPOINT_REQUEST)), s.Colo.VMSTATE_SEND)


def test_incoming_stream_round_trips_through_the_parser():
    cfg = s.Configuration("pc-i440fx-7.2", ["x-ignore-shared"])
    blocks = [s.RamBlock(n, ln) for n, ln in fx.BLOCKS]
    dev, desc = fx.device_sections()
    data = s.write_incoming(cfg, fx.RAM_SID, 4, blocks, {"ram0": 0},
                            [(1, 2, page(9))], dev)
    r = s.Reader(data=data)
    assert r.u32() == s.MAGIC and r.u32() == s.VERSION
    assert r.u8() == s.CONFIGURATION
    assert s.read_configuration(r).capabilities == ["x-ignore-shared"]
    assert r.u8() == s.SECTION_START
    sec = s.read_section_header(r, s.SECTION_START)
    ram = s.RamParser(ignore_shared=True)
    pages = s.PageSet()
    ram.read_body(r, pages)
    s.read_footer(r, sec.section_id)
    assert ram.gpa == {"ram0": 0, "pc.bios": 0}
    assert pages.pages == 1 and pages.view()[2][0].tobytes() == page(9)
    assert r.bytes(len(dev)) == dev


def test_reader_never_resizes_a_buffer_numpy_still_views():
    a, b = socket.socketpair()
    payload = os.urandom(3 << 20)
    threading.Thread(target=lambda: (a.sendall(payload), a.close()), daemon=True).start()
    r = s.Reader(b, chunk=1 << 16)
    held = np.frombuffer(r.take(10), np.uint8)  # a live export of the buffer
    rest = r.bytes(len(payload) - 10)
    assert held.tobytes() + rest == payload


def test_the_pause_counts_from_our_reply_not_from_vmstate_send():
    """QEMU stops the VM on our CHECKPOINT_REPLY (vCPUs out, disk drained and flushed) and
    only then says VMSTATE_SEND: a pause measured from VMSTATE_SEND left that out (it read
    ~4 ms where the guest stood still for ~9)."""
    data, last = fx.initial_stream(RECORDS[:2])
    ck, _ = fx.checkpoint_stream(RECORDS[2:], last)
    request = s.message(s.Colo.CHECKPOINT_REQUEST)
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    stopping = 0.2

    def qemu():
        a.sendall(data)
        assert a.recv(4) == s.message(s.Colo.CHECKPOINT_READY)
        a.sendall(request)
        assert a.recv(4) == s.message(s.Colo.CHECKPOINT_REPLY)
        threading.Event().wait(stopping)  # vm_stop: draining the disk takes its time
        a.sendall(ck[len(request):])

    threading.Thread(target=qemu, daemon=True).start()
    ep = ColoEndpoint(b)
    ep.read_initial()
    ep.ready()
    c = ep.next_checkpoint()
    resumed = ep.ack()
    assert c.stopped_at - c.paused_at >= stopping
    assert resumed - c.paused_at >= stopping
    assert c.paused_at <= c.stopped_at <= c.received_at <= resumed
    a.close()
    b.close()
