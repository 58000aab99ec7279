"""Failure types that say whose fault it was, so each side reacts to the right one.

- `RemusError`: anything a user should read as one clear line (the CLI prints it, exits 1).
- `PeerError`: the other side sent something wrong — the peer daemon over the link, or QEMU
  over its migration stream: corruption, a lie, a protocol violation. The session with that
  peer ends; this host is fine.
- `LocalError`: this host failed (no space, EIO on the store or an image): not a sign that the
  peer died, nor that it lied.
Anything else raised on those paths is a bug in remusdb and is reported as one, with a traceback.
"""


class RemusError(Exception):
    """A failure with a message fit for the user; the CLI prints it and exits non-zero."""


class PeerError(RemusError):
    """The peer (the other daemon, or QEMU) sent bytes that are corrupt, lie or break the
    protocol."""


class LocalError(RemusError):
    """A local resource failed (disk full, I/O error): this host's problem, not the peer's."""
