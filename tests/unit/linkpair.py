"""A pair's keys for tests that talk to a real daemon over loopback: the link is TLS, as in
production (the default), with a CA made in the test's directory."""

from pathlib import Path

from remusdb.checkpoint import handshake, keys, wire
from remusdb.checkpoint.link import Link
from remusdb.config import Config


def secure(cfg: Config, directory: Path) -> Config:
    d = Path(directory) / "keys"
    if not (d / "ca.crt").exists():
        keys.init(d, cfg.vm.name)
    cfg.link.keys = str(d)
    return cfg


def dial(cfg: Config, host: str = "primary", port: int | None = None) -> wire.Connection:
    """A connection to the standby's port as `host` would open it (authenticated)."""
    return handshake.connect((cfg.standby.address, port or cfg.standby.port),
                             Link.for_host(cfg, host), 0)
