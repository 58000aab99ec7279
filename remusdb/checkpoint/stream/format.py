"""QEMU 7.2 migration-stream constants and the small records parsers and writers share.

Formats follow QEMU's migration/savevm.c, ram.c and colo.c (v7.2).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from remusdb.errors import PeerError

PAGE_SIZE = 4096
MAX_BLOCKS = 1024  # RAM blocks of a VM: a handful in practice (a u16 names one on the wire)
MAX_RAM = 4 << 40  # bytes of guest RAM: what the standby would allocate images for
MAGIC, VERSION = 0x5145564D, 3

VM_EOF, SECTION_START, SECTION_PART, SECTION_END, SECTION_FULL = 0x00, 0x01, 0x02, 0x03, 0x04
SUBSECTION, VMDESCRIPTION, CONFIGURATION, COMMAND, FOOTER = 0x05, 0x06, 0x07, 0x08, 0x7E
MIG_CMD_ENABLE_COLO = 8

F_ZERO, F_MEM_SIZE, F_PAGE, F_EOS, F_CONTINUE = 0x02, 0x04, 0x08, 0x10, 0x20
F_XBZRLE, F_COMPRESS = 0x40, 0x100


class Colo(enum.IntEnum):
    CHECKPOINT_READY = 0
    CHECKPOINT_REQUEST = 1
    CHECKPOINT_REPLY = 2
    VMSTATE_SEND = 3
    VMSTATE_SIZE = 4
    VMSTATE_RECEIVED = 5
    VMSTATE_LOADED = 6


class StreamError(PeerError):
    """QEMU's stream is not what a COLO primary with remusdb's capabilities sends."""


class Truncated(StreamError):
    pass


@dataclass
class RamBlock:
    name: str
    length: int

    @property
    def pages(self) -> int:
        return self.length // PAGE_SIZE


@dataclass
class Section:
    kind: int
    section_id: int
    idstr: str = ""
    instance_id: int = 0
    version_id: int = 0


@dataclass
class Configuration:
    machine: str
    capabilities: list[str] = field(default_factory=list)
    target_page_bits: int | None = None

