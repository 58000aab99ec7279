"""Output commit and commit protection without a VM: frame classification, the per-epoch output
buffer against a model (per-flow FIFO, nothing protected out before its ack), stream framing."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remusdb.commitprotect.frames import FramingError, dscp, flow, split
from remusdb.commitprotect.outbuf import OutputBuffer

CODEPOINT = 11
ETH = bytes(6) + bytes(5) + b"\x01"


def ipv4(sport: int, dscp: int, tag: int, proto: int = 6, frag: int = 0) -> bytes:
    body = struct.pack(">HH", sport, 5432) + struct.pack(">I", tag) + bytes(12)
    hdr = struct.pack(">BBHHHBBH4s4s", 0x45, dscp << 2, 20 + len(body), 1, frag, 64, proto, 0,
                      bytes([10, 213, 0, 10]), bytes([10, 213, 0, 3]))
    return ETH + b"\x08\x00" + hdr + body


def ipv6(sport: int, dscp: int) -> bytes:
    tc = dscp << 2
    hdr = struct.pack(">IHBB16s16s", (6 << 28) | (tc << 20), 24, 6, 64, bytes(15) + b"\x01",
                      bytes(15) + b"\x02")
    return ETH + b"\x86\xdd" + hdr + struct.pack(">HH", sport, 5432) + bytes(20)


def tag_of(frame: bytes) -> int:
    return struct.unpack_from(">I", frame, 14 + 20 + 4)[0]


def dscp_flow(buf, off, n):
    return dscp(buf, off, n), flow(buf, off, n)


def test_dscp_and_flow():
    d, f = dscp_flow(ipv4(40000, CODEPOINT, 1), 0, len(ipv4(40000, CODEPOINT, 1)))
    assert d == CODEPOINT
    assert f == dscp_flow(ipv4(40000, 0, 2), 0, 60)[1]  # the flow ignores DSCP and payload
    assert f != dscp_flow(ipv4(40001, CODEPOINT, 1), 0, 60)[1]
    assert dscp_flow(ipv4(40000, CODEPOINT, 1, proto=1), 0, 60)[1] != f  # ICMP: no ports
    assert dscp_flow(ipv4(40000, CODEPOINT, 1, frag=0x2000), 0, 60)[0] == -1  # MF: fragment
    assert dscp_flow(ipv4(40000, CODEPOINT, 1, frag=0x0001), 0, 60)[0] == -1  # an offset
    arp = ETH + b"\x08\x06" + bytes(28)
    assert dscp_flow(arp, 0, len(arp)) == (-1, None)
    v6 = ipv6(40000, CODEPOINT)
    d6, f6 = dscp_flow(v6, 0, len(v6))
    assert d6 == CODEPOINT and f6 is not None and f6 != dscp_flow(ipv6(40001, 0), 0, 78)[1]
    # classification in place, at an offset in a bigger buffer
    buf = bytes(7) + ipv4(40000, CODEPOINT, 9)
    assert dscp_flow(buf, 7, len(buf) - 7) == (CODEPOINT, f)


def test_split_stream():
    frames = [ipv4(1, 0, i) for i in range(3)]
    stream = b"".join(struct.pack(">I", len(f)) + f for f in frames)
    got, rest = split(stream, 0, len(stream) - 5)  # the last frame incomplete
    assert [stream[o:o + n] for o, n in got] == frames[:2]
    assert rest == 2 * (4 + len(frames[0]))
    got, rest = split(stream, rest, len(stream))
    assert [stream[o:o + n] for o, n in got] == frames[2:] and rest == len(stream)
    with pytest.raises(FramingError):
        split(struct.pack(">I", 1 << 20) + bytes(8), 0, 12)


def test_remus_mode_holds_everything_until_its_epoch_is_acked():
    b = OutputBuffer(cp=False, codepoint=CODEPOINT)
    assert b.add(ipv4(1, 0, 0))  # before protection starts: out at once
    b.mark(0)
    assert not b.add(ipv4(1, CODEPOINT, 1))  # unprotected marks mean nothing with cp off
    b.mark(1)
    assert not b.add(ipv4(2, 0, 2))
    assert b.release(0) == []
    assert [tag_of(f) for f in b.release(1)] == [1]
    b.mark(2)
    assert [tag_of(f) for f in b.stop()] == [2]  # protection over: the rest goes out
    assert b.add(ipv4(1, 0, 3)) and b.held_frames == 0
    b.mark(3)  # a checkpoint that was under way when protection ended
    assert b.add(ipv4(1, 0, 4)) and not b.protecting


def test_cp_unprotected_waits_only_behind_its_own_flow():
    b = OutputBuffer(cp=True, codepoint=CODEPOINT)
    b.mark(0)
    assert b.add(ipv4(1, CODEPOINT, 1))  # no frame of flow 1 held: out at once
    assert not b.add(ipv4(1, 0, 2))  # the commit ack: protected, held for epoch 1
    assert not b.add(ipv4(1, CODEPOINT, 3))  # behind it
    assert b.add(ipv4(2, CODEPOINT, 4))  # another flow is not held up
    b.mark(1)
    assert not b.add(ipv4(1, CODEPOINT, 5))  # still behind epoch 1's frame
    assert [tag_of(f) for f in b.release(1)] == [2, 3, 5]
    assert b.add(ipv4(1, CODEPOINT, 6)) and b.flows == {}


ops = st.lists(st.one_of(
    st.tuples(st.just("frame"), st.integers(0, 3), st.booleans()),
    st.tuples(st.just("mark")), st.tuples(st.just("ack")), st.tuples(st.just("stop"))),
    max_size=80)


@settings(max_examples=300, deadline=None)
@given(ops, st.booleans())
def test_output_buffer_against_the_rules(script, cp):
    """Per flow the world sees frames in the order the guest sent them; a protected frame only
    after the ack of the epoch it was sent in; an unprotected one as soon as nothing of its flow
    is held ahead of it; after stop, everything, once."""
    b = OutputBuffer(cp=cp, codepoint=CODEPOINT)
    sent_in: dict[int, tuple[int, int, bool]] = {}  # tag -> (flow, epoch, unprotected)
    out: list[int] = []
    epoch, marked, acked, tag = 0, -1, -1, 0  # `epoch`: the one the guest runs in

    def emit(frames, ack):
        for f in frames:
            t = tag_of(f)
            flow, e, unprot = sent_in[t]
            if ack is not None and not (cp and unprot):
                assert e <= ack, f"frame of epoch {e} out at ack {ack}"
            out.append(t)

    for op in script:
        if op[0] == "frame":
            _, flow, unprot = op
            tag += 1
            sent_in[tag] = (flow, epoch, unprot)
            if b.add(ipv4(1000 + flow, CODEPOINT if unprot else 0, tag)):
                assert b.protecting is False or (cp and unprot)
                out.append(tag)
        elif op[0] == "mark":
            b.mark(marked + 1)
            marked += 1
            epoch = marked + 1
        elif op[0] == "ack" and acked < marked:
            acked += 1
            emit(b.release(acked), acked)
        elif op[0] == "stop":
            emit(b.stop(), None)
            marked, epoch = -1, 0
            acked = -1
            b = _restart(b)
        # The head of every flow's held frames is protected: an unprotected one never waits
        # for nothing.
        heads = {}
        for e in [*b.closed, *([b.open] if b.open else [])]:
            for f in e.frames:
                heads.setdefault(sent_in[tag_of(f)][0], sent_in[tag_of(f)][2])
        assert not (cp and any(heads.values()))
    emit(b.stop(), None)
    assert sorted(out) == list(range(1, tag + 1))  # everything, once
    for flow in range(4):
        mine = [t for t in out if sent_in[t][0] == flow]
        assert mine == sorted(mine)  # per-flow FIFO


def _restart(b: OutputBuffer) -> OutputBuffer:
    """A new protection session gets a new buffer; the old one holds nothing."""
    assert b.held_frames == 0 and not b.protecting and b.flows == {}
    return OutputBuffer(cp=b.cp, codepoint=b.codepoint)
