"""An epoch as the standby buffers it, and the stream description it needs at failover.

Shared by the receiver (frames off the link) and the store (journal replay), so both build an
epoch the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from remusdb.checkpoint import wire
from remusdb.checkpoint.stream.format import (
    MAX_BLOCKS,
    MAX_RAM,
    PAGE_SIZE,
    Configuration,
    RamBlock,
)
from remusdb.errors import PeerError


class EpochError(PeerError):
    """What the primary sent does not fit the store (a page beyond the VM's RAM, an epoch out
    of order): refused before anything is written."""


def _int(v, hi: int) -> int:
    """A JSON integer in [0, hi] (not a float, not a bool: those are a peer's mistake)."""
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
        raise ValueError(f"{v!r} is not an integer in [0, {hi}]")
    return v


def _name(v) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= 255:
        raise ValueError(f"{str(v)[:40]!r} is not a name")
    return v


@dataclass
class Epoch:
    """An epoch as the standby buffers it until its COMMIT frame."""

    number: int
    pages: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    zeros: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    devices: bytes | None = None
    disk: list = field(default_factory=list)  # DISK payloads, applied in order
    disk_writes: int = 0
    refs: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    frames: list[list] = field(default_factory=list)  # encoded frames, for the journal
    wire_bytes: int = 0  # as received (compressed), for the status
    disk_bytes: int = 0  # of DISK payloads buffered: bounded (receive.py)

    @property
    def page_count(self) -> int:
        return sum(len(i) for _, i, _ in self.pages)

    @property
    def zero_count(self) -> int:
        return sum(len(i) for _, i, _ in self.zeros)

    @property
    def ref_count(self) -> int:
        return sum(len(i) for _, i, _ in self.refs)


@dataclass
class StreamInfo:
    """What the standby needs to rebuild an incoming migration stream at failover."""

    config: Configuration
    blocks: list[RamBlock]
    ram_section_id: int
    ram_section_version: int
    shared_block: str  # the memory-backend-file block: mapped, not sent, at failover

    def to_json(self) -> dict:
        return {"machine": self.config.machine, "blocks": [[b.name, b.length]
                                                           for b in self.blocks],
                "ram_section_id": self.ram_section_id,
                "ram_section_version": self.ram_section_version,
                "shared_block": self.shared_block}

    @classmethod
    def from_json(cls, d: dict) -> StreamInfo:
        try:
            if not isinstance(d, dict) or len(d["blocks"]) > MAX_BLOCKS:
                raise ValueError(f"at most {MAX_BLOCKS} RAM blocks")
            blocks = [RamBlock(_name(n), _int(ln, MAX_RAM)) for n, ln in d["blocks"]]
            info = cls(Configuration(_name(d["machine"])), blocks,
                       _int(d["ram_section_id"], 2**32 - 1),
                       _int(d["ram_section_version"], 2**32 - 1), _name(d["shared_block"]))
        except (KeyError, TypeError, ValueError) as e:
            raise EpochError(f"bad stream description from the primary: {e}") from None
        if not blocks or any(b.length <= 0 or b.length % PAGE_SIZE for b in blocks):
            raise EpochError("bad stream description from the primary: block lengths")
        if sum(b.length for b in blocks) > MAX_RAM:
            raise EpochError(f"stream description of more than {MAX_RAM >> 40} TiB of RAM")
        if info.shared_block not in {b.name for b in blocks}:
            raise EpochError(f"shared block {info.shared_block!r} is not a RAM block")
        return info


def add_frame(epoch: Epoch, frame: wire.Frame) -> None:
    """Buffer one PAGES/ZEROS/DEVICES frame of an epoch (shared by receiver and journal replay)."""
    if frame.epoch != epoch.number:
        raise EpochError(f"frame of epoch {frame.epoch} inside epoch {epoch.number}")
    if frame.kind == wire.Kind.PAGES:
        epoch.pages.append(wire.unpack_pages(frame.payload))
    elif frame.kind == wire.Kind.ZEROS:
        epoch.zeros.append(wire.unpack_zeros(frame.payload))
    elif frame.kind == wire.Kind.DEVICES:
        epoch.devices = bytes(frame.payload)
    elif frame.kind == wire.Kind.DISK:
        epoch.disk.append(frame.payload)
    elif frame.kind == wire.Kind.BLOCKREF:
        epoch.refs.append(wire.unpack_refs(frame.payload))
    else:
        raise EpochError(f"unexpected {frame.kind.name} frame inside epoch {epoch.number}")
