"""Writers: COLO replies, and the incoming stream a new QEMU loads at failover."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable

from remusdb.checkpoint.stream import format as fmt
from remusdb.checkpoint.stream.format import Colo, Configuration, RamBlock, StreamError


def message(msg: Colo, value: int | None = None) -> bytes:
    return struct.pack(">I", msg) + (struct.pack(">Q", value) if value is not None else b"")


def _idstr(s: str) -> bytes:
    b = s.encode("ascii")
    return struct.pack(">B", len(b)) + b


def write_configuration(cfg: Configuration) -> bytes:
    name = cfg.machine.encode("ascii")
    out = [bytes([fmt.CONFIGURATION]), struct.pack(">I", len(name)), name]
    if cfg.capabilities:
        out += [bytes([fmt.SUBSECTION]), _idstr("configuration/capabilities"), struct.pack(">I", 1),
                struct.pack(">I", len(cfg.capabilities)), *(_idstr(c) for c in cfg.capabilities)]
    return b"".join(out)


def write_incoming(config: Configuration, ram_sid: int, ram_version: int,
                   blocks: list[RamBlock], gpa: dict[str, int],
                   pages: Iterable[tuple[int, int, bytes]], devices: bytes) -> bytes:
    """Header, configuration, a RAM start section (MEM_SIZE + given pages + EOS), devices, and an
    empty VM description. With x-ignore-shared the shared-file RAM blocks are not in `pages`:
    QEMU maps them from the standby's RAM image."""
    out = [struct.pack(">II", fmt.MAGIC, fmt.VERSION), write_configuration(config)]
    out += [bytes([fmt.SECTION_START]), struct.pack(">I", ram_sid), _idstr("ram"),
            struct.pack(">II", 0, ram_version)]
    total = sum(b.length for b in blocks)
    out.append(struct.pack(">Q", total | fmt.F_MEM_SIZE))
    ignore = "x-ignore-shared" in config.capabilities
    for b in blocks:
        out += [_idstr(b.name), struct.pack(">Q", b.length)]
        if ignore:
            out.append(struct.pack(">Q", gpa.get(b.name, 0)))
    for block, index, data in pages:
        out += [struct.pack(">Q", index * fmt.PAGE_SIZE | fmt.F_PAGE),
                _idstr(blocks[block].name), data]
    out += [struct.pack(">Q", fmt.F_EOS), bytes([fmt.FOOTER]), struct.pack(">I", ram_sid)]
    if devices[-1:] != bytes([fmt.VM_EOF]):
        raise StreamError("device state must end with EOF")
    out.append(devices)
    desc = json.dumps({"page_size": fmt.PAGE_SIZE, "devices": []}).encode()
    out += [bytes([fmt.VMDESCRIPTION]), struct.pack(">I", len(desc)), desc]
    return b"".join(out)

