"""The TOML configuration of one protected VM, validated so every mistake names its key and value.

Sections and keys (all optional; defaults make a working single-machine setup):

    [vm]            name, memory, vcpus, image, accel, cpu, init, ip, gateway, mac, network,
                    tap, bridge, qemu, ram_dir, run_dir
    [checkpoint]    interval_ms
    [optimizations] compression, rt, cp, cp_dscp, page_cache
    [primary]       address, port (the host that starts the VM; roles swap at failover)
    [standby]       address, port, heartbeat_timeout_ms, fence_command, max_disk_size
    [link]          keys, insecure (the checkpoint link's mutual TLS)
    [api]           bind, token_file (each node's REST API; its port: [primary]/[standby] api_port)
    [witness]       endpoints, ttl_s, prefix, watchdog (etcd: at most one host runs the VM)
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from remusdb.errors import RemusError
from remusdb.witness.rules import parse_endpoint

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,23}$")
_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")

COMPRESSION_CODECS = ("off", "xor-rle", "xor-lz4")
ACCELS = ("auto", "kvm", "tcg")
INITS = ("fast", "systemd")
NETWORKS = ("tap", "stream")


class ConfigError(RemusError):
    pass


def parse_size(text: str | int) -> int:
    """'1G', '1048584K', '512MiB' or a plain byte count -> bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f"expected a size like 1G, 512M or 1048584K, got {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def _fail(key: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"config error: {key} = {value!r}: {why}")


def _check_choice(choices):
    def check(key, v):
        if v not in choices:
            raise _fail(key, v, "expected one of " + ", ".join(choices))
        return v
    return check


def _check_int(lo, hi):
    def check(key, v):
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise _fail(key, v, f"expected an integer from {lo} to {hi}")
        return v
    return check


def _check_bool(key, v):
    if not isinstance(v, bool):
        raise _fail(key, v, "expected true or false")
    return v


def _check_str(key, v):
    if not isinstance(v, str) or not v:
        raise _fail(key, v, "expected a non-empty string")
    return v


def _check_ifname(key, v):
    if not isinstance(v, str) or not re.match(r"^[A-Za-z0-9_.-]{1,15}$", v):
        raise _fail(key, v, "expected a network interface name (1-15 characters)")
    return v


def _check_any_str(key, v):
    if not isinstance(v, str):
        raise _fail(key, v, "expected a string")
    return v


def _check_name(key, v):
    if not isinstance(v, str) or not _NAME_RE.match(v):
        raise _fail(key, v, "expected 1-24 characters a-z, 0-9 and '-', starting with a letter")
    return v


def _size_in(key, v, lo: int, hi: int, align: int, expected: str) -> int:
    try:
        n = parse_size(v)
    except ValueError as e:
        raise _fail(key, v, str(e)) from None
    if not lo <= n <= hi or n % align:
        raise _fail(key, v, expected)
    return n


def _check_memory(key, v):
    return _size_in(key, v, 128 << 20, 1 << 40, 4096,
                    "expected between 128M and 1T, a multiple of 4K")


def _check_iface(key, v):
    try:
        iface = ipaddress.IPv4Interface(v)
    except (ValueError, TypeError):
        raise _fail(key, v, "expected an IPv4 address with prefix, like 10.213.0.10/24") from None
    if "/" not in str(v) or iface.network.prefixlen == 32:
        raise _fail(key, v, "expected an IPv4 address with prefix, like 10.213.0.10/24")
    return str(iface)


def _check_ip(key, v):
    try:
        return str(ipaddress.IPv4Address(v))
    except (ValueError, TypeError):
        raise _fail(key, v, "expected an IPv4 address") from None


def _check_mac(key, v):
    if v == "auto":
        return v
    if not isinstance(v, str) or not _MAC_RE.match(v.lower()):
        raise _fail(key, v, "expected 'auto' or a MAC like 52:54:00:12:34:56")
    return v.lower()


def _check_image(key, v):
    if v == "default":
        return v
    if not isinstance(v, str) or not v:
        raise _fail(key, v, "expected 'default' or the path of a raw guest image")
    if not Path(v).is_file():
        raise _fail(key, v, "image file not found")
    return v


def _check_qemu(key, v):
    if v in ("auto", "system", "patched"):
        return v
    if not isinstance(v, str) or not Path(v).is_file():
        raise _fail(key, v, "expected auto, system, patched or the path of a QEMU binary")
    return v


def _check_fraction(key, v):
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v <= 1:
        raise _fail(key, v, "expected a fraction of guest RAM, 0 < x <= 1")
    return float(v)


def _check_dir(key, v):
    if not isinstance(v, str) or not v.startswith("/"):
        raise _fail(key, v, "expected an absolute directory path")
    return v


def _check_path_or_empty(expected: str):
    def check(key, v):
        if not isinstance(v, str) or (v and not v.startswith("/")):
            raise _fail(key, v, expected)
        return v
    return check


def _check_disk_size(key, v):
    return _size_in(key, v, 1 << 20, 1 << 50, 512,
                    "expected between 1M and 1024T, a multiple of 512")


def _check_address(key, v):
    if not isinstance(v, str) or not v or any(c.isspace() for c in v):
        raise _fail(key, v, "expected a host name or IP address")
    return v


def _check_endpoints(key, v):
    if not isinstance(v, list) or len(v) > 16:
        raise _fail(key, v, "expected a list of etcd URLs like [\"http://10.0.0.5:2379\"]")
    for url in v:
        try:
            parse_endpoint(url if isinstance(url, str) else repr(url))
        except ValueError as e:
            raise _fail(key, v, str(e)) from None
    return list(v)


def _check_prefix(key, v):
    if not isinstance(v, str) or not re.match(r"^/[A-Za-z0-9_./-]{0,99}$", v):
        raise _fail(key, v, "expected a key prefix like /remusdb")
    return v


@dataclass
class VMConfig:
    name: str = field(default="remusdb", metadata={"check": _check_name})
    memory: int = field(default=1 << 30, metadata={"check": _check_memory})
    vcpus: int = field(default=2, metadata={"check": _check_int(1, 64)})
    image: str = field(default="default", metadata={"check": _check_image})
    accel: str = field(default="auto", metadata={"check": _check_choice(ACCELS)})
    cpu: str = field(default="qemu64", metadata={"check": _check_str})
    init: str = field(default="fast", metadata={"check": _check_choice(INITS)})
    ip: str = field(default="10.213.0.10/24", metadata={"check": _check_iface})
    gateway: str = field(default="10.213.0.1", metadata={"check": _check_ip})
    mac: str = field(default="auto", metadata={"check": _check_mac})
    network: str = field(default="tap", metadata={"check": _check_choice(NETWORKS)})
    tap: str = field(default="tap0", metadata={"check": _check_ifname})
    bridge: str = field(default="br0", metadata={"check": _check_ifname})
    qemu: str = field(default="auto", metadata={"check": _check_qemu})
    ram_dir: str = field(default="/dev/shm", metadata={"check": _check_dir})
    # Persistent by default: the standby's committed checkpoint must outlive a reboot of its
    # host (/run is tmpfs on most hosts; a tmpfs store survives only a daemon's restart).
    run_dir: str = field(default="/var/lib/remusdb", metadata={"check": _check_dir})

    @property
    def address(self) -> str:
        return self.ip.split("/")[0]

    @property
    def mac_address(self) -> str:
        """A stable locally administered MAC derived from the VM name unless one is given."""
        if self.mac != "auto":
            return self.mac
        h = zlib.crc32(self.name.encode())
        return f"52:54:00:{(h >> 16) & 0xFF:02x}:{(h >> 8) & 0xFF:02x}:{h & 0xFF:02x}"


INTERVAL_MS = (10, 10_000)  # the checkpoint interval's bounds, in the config and live
INTERVAL_BOUNDS = f"{INTERVAL_MS[0]}..{INTERVAL_MS[1]}"


def interval_ok(ms: object) -> bool:
    """A whole number of milliseconds within INTERVAL_MS (not a bool, not a float)."""
    return type(ms) is int and INTERVAL_MS[0] <= ms <= INTERVAL_MS[1]


@dataclass
class CheckpointConfig:
    interval_ms: int = field(default=100, metadata={"check": _check_int(*INTERVAL_MS)})


@dataclass
class OptimizationsConfig:
    compression: str = field(default="xor-lz4",
                             metadata={"check": _check_choice(COMPRESSION_CODECS)})
    rt: bool = field(default=True, metadata={"check": _check_bool})
    # Off by default: with CP a failover keeps every acknowledged commit but breaks the
    # connections of busy clients (docs/architecture.md, "TCP state"); on, for throughput.
    cp: bool = field(default=False, metadata={"check": _check_bool})
    # The DSCP the DBMS puts on unprotected output: the guest's remusdb_cp.dscp must match.
    cp_dscp: int = field(default=11, metadata={"check": _check_int(1, 63)})
    page_cache: float = field(default=0.10, metadata={"check": _check_fraction})


@dataclass
class PrimaryConfig:
    """The host that runs the VM first. After a failover the roles swap: each node daemon
    listens on its own host's address and port, and connects to the other's as primary."""

    address: str = field(default="127.0.0.1", metadata={"check": _check_address})
    port: int = field(default=7788, metadata={"check": _check_int(1, 65535)})
    # This host's node REST API (status, health checks, metrics; 0: none).
    api_port: int = field(default=7790, metadata={"check": _check_int(0, 65535)})


@dataclass
class StandbyConfig:
    address: str = field(default="127.0.0.1", metadata={"check": _check_address})
    port: int = field(default=7787, metadata={"check": _check_int(1, 65535)})
    api_port: int = field(default=7791, metadata={"check": _check_int(0, 65535)})
    heartbeat_timeout_ms: int = field(default=1000, metadata={"check": _check_int(50, 60_000)})
    fence_command: str = field(default="", metadata={"check": _check_any_str})
    # The largest disk a primary may announce: a HELLO cannot make this host create more.
    max_disk_size: int = field(default=1 << 40, metadata={"check": _check_disk_size})


@dataclass
class LinkConfig:
    """Mutual TLS on the checkpoint link (checkpoint/link.py); plain TCP only when asked."""

    keys: str = field(default="", metadata={"check": _check_path_or_empty(
        "expected an absolute directory path (or \"\": /etc/remusdb/<vm>)")})
    insecure: bool = field(default=False, metadata={"check": _check_bool})


@dataclass
class ApiConfig:
    """Each node's REST API (ops/api.py): reading is open to whoever reaches it; acting
    (failover, switchover, reprotect, interval) needs a request signed with `token_file`."""

    # "": each host's own address (its [primary]/[standby] address); "0.0.0.0": all of them
    # (one config serves both hosts: a single address would fit only one).
    bind: str = field(default="", metadata={"check": _check_choice(("", "0.0.0.0"))})
    token_file: str = field(default="", metadata={"check": _check_path_or_empty(
        "expected an absolute file path (or \"\": api.token in link.keys)")})


@dataclass
class WitnessConfig:
    """etcd as the witness (witness/): no endpoints, no witness (the standby then fails over
    on silence only after the fence command or an operator)."""

    endpoints: list = field(default_factory=list, metadata={"check": _check_endpoints})
    ttl_s: int = field(default=3, metadata={"check": _check_int(2, 60)})
    prefix: str = field(default="/remusdb", metadata={"check": _check_prefix})
    # A Linux watchdog device (softdog, or the board's): the host is reset if its daemon
    # stops renewing without fencing. "": none.
    watchdog: str = field(default="", metadata={"check": _check_path_or_empty(
        "expected the absolute path of a watchdog device, or \"\"")})

    @property
    def enabled(self) -> bool:
        return bool(self.endpoints)

    @property
    def margin_s(self) -> float:
        """How long before its lease could expire the primary fences itself."""
        return max(0.5, self.ttl_s / 3)

    @property
    def watchdog_timeout_s(self) -> int:
        """It must reset the host before the lease could end: within TTL − margin."""
        return max(1, int(self.ttl_s - self.margin_s))


@dataclass
class Config:
    vm: VMConfig = field(default_factory=VMConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    optimizations: OptimizationsConfig = field(default_factory=OptimizationsConfig)
    primary: PrimaryConfig = field(default_factory=PrimaryConfig)
    standby: StandbyConfig = field(default_factory=StandbyConfig)
    link: LinkConfig = field(default_factory=LinkConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    witness: WitnessConfig = field(default_factory=WitnessConfig)

    def api_address(self, name: str) -> tuple[str, int]:
        """(address, port) where host `name`'s node answers HTTP; port 0: no API."""
        address, _ = self.host(name)
        port = self.primary.api_port if name == "primary" else self.standby.api_port
        return address, port

    def host(self, name: str) -> tuple[str, int]:
        """(address, port) of host `name` ("primary" or "standby": the section naming it)."""
        if name == "primary":
            return self.primary.address, self.primary.port
        if name == "standby":
            return self.standby.address, self.standby.port
        raise ConfigError(f"unknown host {name!r}: expected primary or standby")


def _build_section(cls, section: str, raw: Any):
    if not isinstance(raw, dict):
        raise ConfigError(f"config error: [{section}] must be a table")
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(
                f"config error: unknown key '{section}.{key}' "
                f"(known: {', '.join(sorted(known))})"
            )
        values[key] = known[key].metadata["check"](f"{section}.{key}", value)
    return cls(**values)


def from_dict(raw: dict) -> Config:
    # every field of Config is a section with a default_factory (the filter narrows the type)
    sections = {f.name: f.default_factory for f in fields(Config) if callable(f.default_factory)}
    built = {}
    for name, value in raw.items():
        if name not in sections:
            raise ConfigError(
                f"config error: unknown section [{name}] (known: {', '.join(sections)})"
            )
        built[name] = _build_section(type(sections[name]()), name, value)
    return Config(**built)


def load(path: str | Path) -> Config:
    """Read and validate a config file; every failure is one ConfigError line."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config error: file not found: {p}") from None
    except OSError as e:
        raise ConfigError(f"config error: cannot read {p}: {e.strerror}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config error: {p}: invalid TOML: {e}") from None
    return from_dict(raw)


def dumps(cfg: Config) -> str:
    """The config as TOML, every key written: `from_dict(tomllib.loads(dumps(cfg))) == cfg`."""
    return tomli_w.dumps(asdict(cfg))


EXAMPLE = """\
# remusdb: one protected database VM
[vm]
name = "pg1"
memory = "1G"            # guest RAM (K/M/G suffix)
vcpus = 2
image = "default"        # the cached image from 'remusdb image build', or a raw image path
accel = "auto"           # auto = KVM where the CPU has vmx/svm, else TCG
init = "fast"            # fast (no systemd) or systemd
qemu = "auto"            # auto: Debian's QEMU under KVM, remusdb's patched build under TCG
ip = "10.213.0.10/24"
gateway = "10.213.0.1"

[checkpoint]
interval_ms = 100

[optimizations]
compression = "xor-lz4"  # xor-lz4 | xor-rle | off  (benchmarks/compression.py)
rt = true                # disk read tracking
cp = false               # commit protection: only commit acks wait (much faster), but busy
                         # clients' connections break at failover: they must time out
                         # (e.g. libpq tcp_user_timeout) and reconnect
cp_dscp = 11             # the DSCP of unprotected output (the guest's remusdb_cp.dscp)
page_cache = 0.10        # fraction of guest RAM for the compression page cache

[primary]
address = "127.0.0.1"    # the host that starts the VM (its node listens here once it is a
port = 7788              # standby after a failover; the new primary connects to it)
api_port = 7790          # this host's REST API (/status, /primary, /standby, /metrics); 0: none

[standby]
address = "127.0.0.1"    # where the standby daemon listens (the primary connects to it)
port = 7787
api_port = 7791          # this host's REST API (/status, /primary, /standby, /metrics); 0: none
heartbeat_timeout_ms = 1000
fence_command = ""       # run before failing over on silence; empty: wait for an operator
max_disk_size = "1T"     # the largest disk a primary may announce

[link]
keys = ""                # ca.crt, <host>.crt, <host>.key ('remusdb keys init');
                         # "": /etc/remusdb/<vm name>
insecure = false         # true: plain TCP, no authentication (never in production)

[api]
bind = ""                # "": each host's own address above; "0.0.0.0": all its addresses
token_file = ""          # the token that signs failover/switchover/reprotect/interval over
                         # HTTP ('remusdb keys init' writes one); "": link.keys/api.token

[witness]
endpoints = []           # etcd members, e.g. ["http://10.0.0.5:2379", "http://10.0.0.6:2379"]:
                         # a leader key under a lease, so at most one host runs the VM and a
                         # silent primary is replaced without a fence command; [] = no witness
ttl_s = 3                # the lease; a primary that cannot renew fences itself before it ends
prefix = "/remusdb"      # keys: <prefix>/<vm name>/leader and .../protection
watchdog = ""            # e.g. "/dev/watchdog" (softdog): reset the host if its daemon hangs
"""
