"""`remusdb demo`: bring up the protected-VM stack as far as it goes today.

Hosts as namespaces (primary, standby, client), the database VM on the primary's bridge, and
PostgreSQL and MariaDB queried from the client host over the network. Later issues extend this to
protect -> load -> kill the primary -> failover.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from remusdb import dbclient
from remusdb.config import Config
from remusdb.hostnet import Lab
from remusdb.vm import image_for, launch


def run(cfg: Config, out=sys.stdout) -> int:
    def say(msg: str) -> None:
        print(msg, file=out, flush=True)

    image = image_for(cfg)
    say(f"guest image: {image.root}")
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="remusdb-demo-",
                                                   dir=cfg.vm.ram_dir) as tmp:
        primary = lab.members["primary"]
        say("hosts: " + ", ".join(f"{h.name} {h.address}" for h in lab.members.values()))
        tap = lab.add_tap("primary")
        cfg.vm.gateway = lab.gateway
        t0 = time.monotonic()
        guest = launch(cfg, image, Path(tmp), netns=primary.netns, tap=tap)
        try:
            say(f"VM '{cfg.vm.name}' at {cfg.vm.address} on {primary.name}'s bridge "
                f"({guest.spec.accel}, {cfg.vm.vcpus} vCPU, {cfg.vm.memory >> 20} MiB), "
                f"up in {time.monotonic() - t0:.1f} s")
            with lab.inside("client"):
                pg = dbclient.query_one(dbclient.postgres, cfg.vm.address, "SELECT version()")
                my = dbclient.query_one(dbclient.mariadb, cfg.vm.address, "SELECT VERSION()")
            say(f"from client {lab.members['client'].address}:")
            say(f"  PostgreSQL: {pg.split(' on ')[0]}")
            say(f"  MariaDB:    {my}")
            info = guest.agent.call("guest-info")
            say(f"  guest agent: qemu-ga {info['version']}")
            say("not yet: protect, load, kill the primary, failover (next issues)")
        finally:
            guest.stop()
    return 0
