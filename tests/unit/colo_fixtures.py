"""Synthetic COLO primary streams in QEMU 7.2's format, for parser tests without a VM."""

import json
import struct

from remusdb.checkpoint import stream as s

BLOCKS = [("ram0", 64 * s.PAGE_SIZE), ("pc.bios", 4 * s.PAGE_SIZE)]
RAM_SID = 2


def idstr(name):
    b = name.encode()
    return bytes([len(b)]) + b


def page_records(records, last_block=None):
    """records: (block name, page index, bytes of 4096 | int fill for a ZERO record)."""
    out = []
    for name, index, payload in records:
        cont = name == last_block
        flags = (s.F_PAGE if isinstance(payload, bytes) else s.F_ZERO) | (
            s.F_CONTINUE if cont else 0)
        out.append(struct.pack(">Q", index * s.PAGE_SIZE | flags))
        if not cont:
            out.append(idstr(name))
        out.append(payload if isinstance(payload, bytes) else bytes([payload]))
        last_block = name
    return b"".join(out), last_block


def device_sections(devices=(("timer", 0, b"T" * 40), ("cpu", 0, b"C" * 300),
                             ("cpu", 1, b"D" * 300))):
    out = []
    for sid, (name, inst, body) in enumerate(devices, start=10):
        out += [bytes([s.SECTION_FULL]), struct.pack(">I", sid), idstr(name),
                struct.pack(">II", inst, 1), body, bytes([s.FOOTER]), struct.pack(">I", sid)]
    out.append(bytes([s.VM_EOF]))
    desc = {"page_size": 4096, "devices": [{"name": n, "instance_id": i} for n, i, _ in devices]}
    return b"".join(out), desc


def initial_stream(records, devices=None):
    """Header, configuration, ENABLE_COLO, RAM start/part/end, devices, EOF, VM description."""
    dev, desc = devices or device_sections()
    total = sum(n for _, n in BLOCKS)
    mem = struct.pack(">Q", total | s.F_MEM_SIZE) + b"".join(
        idstr(n) + struct.pack(">Q", ln) for n, ln in BLOCKS)
    body, last = page_records(records)
    desc_json = json.dumps(desc, separators=(",", ":")).replace('{"page_size":', '{"page_size": ')
    out = [struct.pack(">II", s.MAGIC, s.VERSION),
           bytes([s.CONFIGURATION]), struct.pack(">I", 13), b"pc-i440fx-7.2",
           bytes([s.COMMAND]), struct.pack(">HH", s.MIG_CMD_ENABLE_COLO, 0),
           bytes([s.SECTION_START]), struct.pack(">I", RAM_SID), idstr("ram"),
           struct.pack(">II", 0, 4), mem, struct.pack(">Q", s.F_EOS),
           bytes([s.FOOTER]), struct.pack(">I", RAM_SID),
           bytes([s.SECTION_PART]), struct.pack(">I", RAM_SID), body, struct.pack(">Q", s.F_EOS),
           bytes([s.FOOTER]), struct.pack(">I", RAM_SID),
           bytes([s.SECTION_END]), struct.pack(">I", RAM_SID), struct.pack(">Q", s.F_EOS),
           bytes([s.FOOTER]), struct.pack(">I", RAM_SID),
           dev, bytes([s.VMDESCRIPTION]), struct.pack(">I", len(desc_json)),
           desc_json.encode()]
    return b"".join(out), last


def checkpoint_stream(records, last_block, devices=b"\x04devstate\x00"):
    body, last = page_records(records, last_block)
    out = [s.message(s.Colo.CHECKPOINT_REQUEST), s.message(s.Colo.VMSTATE_SEND),
           bytes([s.SECTION_END]), struct.pack(">I", RAM_SID), body, struct.pack(">Q", s.F_EOS),
           bytes([s.FOOTER]), struct.pack(">I", RAM_SID), bytes([s.VM_EOF]),
           s.message(s.Colo.VMSTATE_SIZE, len(devices)), devices]
    return b"".join(out), last
