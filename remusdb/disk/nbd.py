"""The NBD protocol as the disk server speaks it: fixed newstyle handshake, simple replies.

Pure: byte layouts and the decisions about them (which options are answered how, which requests
are valid), so they can be tested without sockets. The server (disk/server.py) does the I/O.
Reference: the NBD protocol document (github.com/NetworkBlockDevice/nbd, doc/proto.md).
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass

NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

# Handshake flags (server) and client flags
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1

# Options
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_INFO = 6
OPT_GO = 7

# Option replies
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_UNKNOWN = (1 << 31) + 6

INFO_EXPORT = 0
INFO_BLOCK_SIZE = 3

# Transmission flags
TF_HAS_FLAGS = 1 << 0
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TRANSMISSION_FLAGS = (TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_TRIM
                      | TF_SEND_WRITE_ZEROES)

# Commands and their flags
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES = range(7)
CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1

MIN_BLOCK = 512
PREFERRED_BLOCK = 4096
MAX_REQUEST = 32 << 20  # a client must not send more in one request (NBD_INFO_BLOCK_SIZE)

HELLO = struct.Struct(">QQH")
OPTION = struct.Struct(">QII")
OPT_REPLY = struct.Struct(">QIII")
REQUEST = struct.Struct(">IHHQQI")
REPLY = struct.Struct(">IIQ")


class ProtocolError(Exception):
    """The client broke the protocol: the connection ends (NBD has no way to resync)."""


@dataclass
class Request:
    flags: int
    type: int
    handle: int
    offset: int
    length: int


def server_hello() -> bytes:
    return HELLO.pack(NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)


def option_reply(option: int, reply: int, data: bytes = b"") -> bytes:
    return OPT_REPLY.pack(OPT_REPLY_MAGIC, option, reply, len(data)) + data


def export_info(size: int) -> list[bytes]:
    """NBD_REP_INFO replies for OPT_INFO / OPT_GO: the size and flags, and the block sizes."""
    return [struct.pack(">HQH", INFO_EXPORT, size, TRANSMISSION_FLAGS),
            struct.pack(">HIII", INFO_BLOCK_SIZE, MIN_BLOCK, PREFERRED_BLOCK, MAX_REQUEST)]


def parse_go(data: bytes | bytearray) -> str:
    """The export name an OPT_GO / OPT_INFO asks for."""
    if len(data) < 6:
        raise ValueError("short NBD_OPT_GO")
    (n,) = struct.unpack_from(">I", data)
    if len(data) < 4 + n + 2:
        raise ValueError("NBD_OPT_GO name overruns the option")
    (k,) = struct.unpack_from(">H", data, 4 + n)
    if len(data) != 4 + n + 2 + 2 * k:
        raise ValueError("NBD_OPT_GO info requests do not fill the option")
    return data[4 : 4 + n].decode(errors="replace")


def parse_request(hdr: bytes | bytearray) -> Request:
    magic, flags, typ, handle, offset, length = REQUEST.unpack(hdr)
    if magic != REQUEST_MAGIC:
        raise ProtocolError(f"bad NBD request magic {magic:#x}")
    return Request(flags, typ, handle, offset, length)


def check(req: Request, size: int) -> int:
    """0 if the server may carry out `req` on an export of `size` bytes, else the errno for
    the reply. A bad write still has its payload read by the server (to stay in sync)."""
    if req.type in (CMD_READ, CMD_WRITE, CMD_TRIM, CMD_WRITE_ZEROES, CMD_CACHE):
        if req.length > MAX_REQUEST and req.type in (CMD_READ, CMD_WRITE):
            return errno.EOVERFLOW
        if req.offset + req.length > size:
            return errno.EINVAL if req.type != CMD_WRITE else errno.ENOSPC
        return 0
    if req.type == CMD_FLUSH:
        return 0 if req.offset == 0 and req.length == 0 else errno.EINVAL
    return errno.EINVAL


def simple_reply(handle: int, error: int = 0) -> bytes:
    return REPLY.pack(SIMPLE_REPLY_MAGIC, error, handle)
