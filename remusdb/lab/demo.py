"""`remusdb demo` (`make demo`): the main promise, shown once — one failover drill with defaults.

Three hosts as network namespaces (primary, standby, client) on one switch; the database VM
protected on the primary (the default optimizations: ASC and RT); a ledger workload from the
client; kill -9 of the primary; the standby resumes the VM; then every commit the clients were
told about is checked (`remusdb drill failover` runs more of them, with choices).
"""

from __future__ import annotations

import sys

from remusdb.config import Config
from remusdb.drill import command
from remusdb.image import builder
from remusdb.vm import image_for


def run(interval_ms: int = 100, out=sys.stdout, witness: bool = False) -> int:
    image = image_for(Config())
    print(f"guest image: {image.root} (recipe {builder.recipe_key()})", file=out, flush=True)
    return command.failover("postgres", interval_ms, "asc,rt", "random", 1, False, out=out,
                            witness=witness)
