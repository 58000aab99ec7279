"""`remusdb list`: every VM of a set of configs, each host's node asked over its REST API.

The hosts are asked all at once (a host that is down costs one timeout, not one per VM); the
row itself is `health.list_row`'s reading of the answers.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from remusdb import config as configmod
from remusdb.config import Config, ConfigError
from remusdb.errors import RemusError
from remusdb.ops import api, health

HOSTS = ("primary", "standby")


def configs(paths: list[str]) -> list[Config]:
    return [c for _, c in config_files(paths)]


def config_files(paths: list[str]) -> list[tuple[Path, Config]]:
    """The configs named (files) or held (directories: their *.toml, sorted), with their
    files; one VM name twice, two VMs on one port, or a directory without any, is an error
    naming it."""
    out: list[tuple[Path, Config]] = []
    for p in map(Path, paths):
        files = sorted(p.glob("*.toml")) if p.is_dir() else [p]
        if not files:
            raise ConfigError(f"config error: no *.toml in directory {p}")
        out += [(f, configmod.load(f)) for f in files]
    seen: dict[str, Path] = {}
    for f, cfg in out:
        if cfg.vm.name in seen:
            raise ConfigError(f"config error: VM {cfg.vm.name} is in both {seen[cfg.vm.name]} "
                              f"and {f}")
        seen[cfg.vm.name] = f
    clash = port_clashes([c for _, c in out])
    if clash:
        raise ConfigError(f"config error: {clash}")
    return out


def port_clashes(cfgs: list[Config]) -> str:
    """Two VMs of one host pair must not share a port (checkpoint link or API) on one
    address: the second node would not start. The first clash, or ""."""
    used: dict[tuple[str, int], str] = {}
    for cfg in cfgs:
        for host in HOSTS:
            address, port = cfg.host(host)
            section = getattr(cfg, host)
            for key, p in ((f"{host}.port", port), (f"{host}.api_port", section.api_port)):
                if not p:
                    continue
                what = f"VM {cfg.vm.name}'s {key}"
                if (address, p) in used:
                    return f"{what} = {p} on {address} is also {used[(address, p)]}"
                used[(address, p)] = what
    return ""


def whose(doc: dict, cfg: Config, host: str) -> str:
    """"" when a /status answer is the node of this VM and host, else what it is (a port
    mixed up between two VMs must not show one's state as the other's)."""
    node = doc["documents"].get("node") or {}
    if (node.get("vm"), node.get("host")) != (cfg.vm.name, host):
        return (f"{cfg.api_address(host)[0]}:{cfg.api_address(host)[1]} answers for VM "
                f"{node.get('vm')} host {node.get('host')}, not {cfg.vm.name} {host}")
    return ""


def label(cfg: Config, host: str) -> str:
    return f"{host}/{cfg.host(host)[0]}"


def ask(cfg: Config, host: str, timeout: float = 2.0) -> dict | str:
    """Host `host`'s `/status` for this VM, or why there is none (one line): no API, no
    answer, or the node of another VM or host answering on that port."""
    address, port = cfg.api_address(host)
    if not port:
        return "no API (api_port = 0)"
    try:
        doc = api.status(address, port, timeout)
    except RemusError as e:
        return str(e)
    return whose(doc, cfg, host) or doc


def rows(cfgs: list[Config], timeout: float = 2.0) -> list[dict]:
    """One row per VM, in the configs' order."""
    jobs = [(cfg, host) for cfg in cfgs for host in HOSTS]
    with ThreadPoolExecutor(min(16, len(jobs) or 1)) as pool:
        answers = list(pool.map(lambda j: ask(j[0], j[1], timeout), jobs))
    now = time.time()
    out = []
    for i, cfg in enumerate(cfgs):
        got = {label(cfg, h): answers[2 * i + k] for k, h in enumerate(HOSTS)}
        out.append(health.list_row(cfg.vm.name, got, now))
    return out
