"""TPC-C (PostgreSQL and MariaDB): the driver contract the runner calls — prepare, run, check.

Defaults fit a TCG guest (1 warehouse, 4 terminals). The thesis (Table 5.2) ran 20 warehouses
(TPC-C on PostgreSQL, ~1.9 GB) with 20 clients on real hardware: `--scale 20 --clients 20`.
"""

from __future__ import annotations

from collections.abc import Callable

from benchmarks.target import Target, loaded_row
from benchmarks.tpcc import checks, load, terminal
from benchmarks.tpcc.gen import Scale
from remusdb.errors import RemusError

NAME = "tpcc"
UNIT = "tpmC"
DBS = ("postgres", "mariadb")
DEFAULT_SCALE = 1        # warehouses
PAPER_SCALE = 20
DEFAULT_CLIENTS = 4


def check_scale(scale) -> float | int:
    """Whole warehouses, or a fraction of one (< 1: items, customers and orders scaled down
    with every rule kept — for smoke runs and tests; not a spec-sized database)."""
    try:
        f = float(scale)
    except (TypeError, ValueError):
        raise RemusError(f"tpcc: scale is a number of warehouses, got {scale!r}") from None
    if f <= 0 or (f > 1 and f != int(f)):
        raise RemusError(f"tpcc: scale must be whole warehouses, or a fraction of one "
                         f"(0 < scale < 1), got {scale:g}")
    return int(f) if f >= 1 else f


def _scale(scale) -> Scale:
    f = check_scale(scale)
    if isinstance(f, int):
        return Scale(warehouses=f)
    customers = max(10, round(3000 * f))
    return Scale(warehouses=1, items=max(100, round(100_000 * f)), customers=customers,
                 orders=customers)


def prepare(target: Target, scale=DEFAULT_SCALE, say: Callable[[str], None] = print,
            seed: int = 1) -> dict:
    s = _scale(scale)
    return {"scale": check_scale(scale), "items": s.items, "customers_per_district": s.customers,
            **load.load(target, s, seed=seed, say=say)}


def run(target: Target, duration_s: float = 60, clients: int = DEFAULT_CLIENTS,
        say: Callable[[str], None] = print, seed: int = 1) -> dict:
    if duration_s <= 0 or clients < 1:
        raise RemusError(f"tpcc: need a duration > 0 and ≥ 1 client, got {duration_s} s, "
                         f"{clients} client(s)")
    return terminal.run(target, loaded_scale(target), duration_s, clients, seed=seed, say=say)


def check(target: Target) -> list[str]:
    return checks.check(target)


def loaded_scale(target: Target) -> Scale:
    """The size of the database that is there, so terminals draw ids that exist."""
    w, items, districts, customers = loaded_row(
        target, "SELECT (SELECT count(*) FROM warehouse), (SELECT max(i_id) FROM item), "
        "(SELECT count(*) FROM district WHERE d_w_id = 1), "
        "(SELECT max(c_id) FROM customer WHERE c_w_id = 1 AND c_d_id = 1)", NAME)
    return Scale(warehouses=w, items=items, districts=districts, customers=customers,
                 orders=customers)
