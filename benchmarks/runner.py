"""`remusdb bench`: one benchmark in each protection mode, back to back on this machine, each
on a fresh VM restored from the same snapshot, normalized to the unprotected run of the same
invocation (the thesis's figures 5.7–5.16). Sweeps repeat that over checkpoint intervals, buffer
pool sizes or database sizes. Results are written after every point, so a crash loses only the
point it was measuring."""

from __future__ import annotations

import contextlib
import importlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.modes import BENCHMARKS, MODES
from benchmarks.target import Target, first_line, guest_target, mariadb_target, postgres_target
from remusdb.config import Config
from remusdb.errors import RemusError

SWEEPS = {"interval": "checkpoint interval (ms)", "buffer-pool": "buffer pool",
          "scale": "database size (benchmark scale)"}
RESULTS = Path(__file__).resolve().parent / "results"


def driver(name: str):
    if name not in BENCHMARKS:
        raise RemusError(f"unknown benchmark {name!r} (expected one of {', '.join(BENCHMARKS)})")
    try:
        return importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as e:
        raise RemusError(f"benchmark {name} is not available in this build ({e})") from None


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise RemusError(f"unknown mode {', '.join(bad) or repr(text)} (modes: "
                         f"{', '.join(MODES)})")
    if len(set(modes)) != len(modes):
        raise RemusError(f"mode listed twice in {text!r}")
    return modes


def parse_sweep(text: str | None) -> tuple[str, list] | None:
    """`interval=25,50,100`, `buffer-pool=64M,128M` or `scale=1,2,4`."""
    if not text:
        return None
    kind, _, values = text.partition("=")
    if kind not in SWEEPS or not values:
        raise RemusError(f"bad --sweep {text!r}: expected one of "
                         f"{', '.join(k + '=V1,V2,..' for k in SWEEPS)}")
    vals = [v.strip() for v in values.split(",") if v.strip()]
    try:
        if kind == "interval":
            out = [int(v) for v in vals]
            if any(not 10 <= v <= 10_000 for v in out):
                raise ValueError
        elif kind == "scale":
            out = [float(v) for v in vals]
            if any(v <= 0 for v in out):
                raise ValueError
        else:
            from remusdb.config import parse_size
            out = [parse_size(v) for v in vals]
            if any(v < 16 << 20 for v in out):
                raise ValueError
    except ValueError:
        raise RemusError(f"bad --sweep values {values!r} for {kind} (intervals 10–10000 ms, "
                         "scales > 0, buffer pools ≥ 16M like 64M,256M)") from None
    return kind, out


def value_label(kind: str | None, value) -> str:
    if value is None:
        return ""
    if kind == "buffer-pool":
        return f"{value >> 20}M"
    if kind == "interval":
        return f"{value}ms"
    return f"{value:g}"


def check_scale(drv, scale: float) -> float | int:
    if hasattr(drv, "check_scale"):
        return drv.check_scale(scale)
    if scale <= 0:
        raise RemusError(f"{drv.NAME}: scale must be > 0, got {scale:g}")
    if isinstance(drv.DEFAULT_SCALE, int):
        if scale != int(scale):
            raise RemusError(f"{drv.NAME}: scale must be a whole number, got {scale:g}")
        return int(scale)
    return scale


def unavailable(db: str, mode: str) -> str | None:
    """Why a mode cannot run with this database, or None."""
    if db == "mariadb" and MODES[mode] and MODES[mode]["cp"]:
        return "commit protection has no MariaDB side yet (its frames would all be held)"
    return None


@dataclass
class Plan:
    name: str
    db: str = "postgres"
    modes: list[str] = field(default_factory=lambda: list(MODES))
    duration_s: float = 60
    clients: int | None = None
    scale: float | None = None
    interval_ms: int | None = None
    sweep: tuple[str, list] | None = None
    cfg: Config = field(default_factory=Config)


def points(plan: Plan) -> list[tuple[object, str]]:
    """(sweep value, mode) in run order; an interval sweep measures unprotected only once."""
    if not plan.sweep:
        return [(None, m) for m in plan.modes]
    kind, values = plan.sweep
    out = []
    if kind == "interval" and "unprotected" in plan.modes:
        out.append((None, "unprotected"))
    for v in values:
        out += [(v, m) for m in plan.modes if not (kind == "interval" and m == "unprotected")]
    return out


def normalize(result: dict) -> None:
    """Each point's score over its unprotected baseline: the same sweep value, or the one
    unprotected run of an interval sweep. Lower-is-better scores are inverted, so > 1 is
    always better."""
    base = {}
    for p in result["points"]:
        if p["mode"] == "unprotected" and p.get("score"):
            base[p["sweep_value"]] = p["score"]
    for p in result["points"]:
        ref = base.get(p["sweep_value"], base.get(None))
        if p.get("score") and ref:
            r = p["score"] / ref
            p["normalized"] = round(r if p.get("higher_is_better", True) else 1 / r, 4)


def save(result: dict, out: Path) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    tmp.replace(out)


@contextlib.contextmanager
def _vm(lab, mode: str, run: Path, plan: Plan, interval_ms: int, buffer_pool: int | None):
    """The database VM of one point: yields (target, sent_bytes() or None)."""
    from remusdb.image import builder
    from remusdb.lab.daemons import Protected
    from remusdb.vm import launch

    vm = plan.cfg.vm
    if MODES[mode] is None:
        # The lab's addresses, the user's machine size: as the protected modes get it.
        cfg = Config()
        cfg.vm.memory, cfg.vm.vcpus, cfg.vm.accel = vm.memory, vm.vcpus, vm.accel
        guest = launch(cfg, builder.build(), run, netns=lab.ns("primary"))
        try:
            if buffer_pool:
                _set_buffer_pool(guest.agent, plan.db, buffer_pool)
            yield guest_target(lab, plan.db), None
        finally:
            guest.kill()
        return
    opts = dict(MODES[mode], page_cache=plan.cfg.optimizations.page_cache)
    with Protected(lab, run, interval_ms=interval_ms, optimizations=opts,
                   vm={"memory": vm.memory, "vcpus": vm.vcpus, "accel": vm.accel}) as p:
        if buffer_pool:
            from remusdb.hypervisor.agent import GuestAgent
            agent = GuestAgent(p.layout.primary_vm.agent)
            try:
                _set_buffer_pool(agent, plan.db, buffer_pool)
            finally:
                agent.close()

        def sent():
            st = p.status("primary") or {}
            return (st.get("totals") or {}).get("sent_bytes")
        yield guest_target(lab, plan.db), sent


def _set_buffer_pool(agent, db: str, size: int) -> None:
    """PostgreSQL restarts with the new shared_buffers; InnoDB resizes its pool online."""
    agent.wait_ready(30)
    mb = size >> 20
    if db == "postgres":
        cmd = f"pg_ctlcluster 15 main restart -m fast -o '-c shared_buffers={mb}MB'"
    else:
        cmd = f"mariadb -e 'SET GLOBAL innodb_buffer_pool_size = {mb << 20}'"
    r = agent.exec(["sh", "-c", cmd], timeout=300)
    if r.exitcode != 0:
        raise RemusError(f"setting the buffer pool to {mb} MB failed: {r.stderr.strip()}")


def buffer_pool_bytes(target: Target) -> int:
    """What the database says its buffer pool is (a sweep point records it, not the wish)."""
    conn = target.open()
    try:
        with conn.cursor() as cur:
            if target.kind == "postgres":
                cur.execute("SELECT setting::bigint * 8192 FROM pg_settings "
                            "WHERE name = 'shared_buffers'")
            else:
                cur.execute("SELECT @@innodb_buffer_pool_size")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def _wait_open(target: Target, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            target.open().close()
            return
        except RemusError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def measure(drv, target: Target, plan: Plan, scale, say, sent=None,
            prepare: bool = True) -> dict:
    """Load, run, check one database: the part of a point that needs no VM."""
    point = {"prepare": drv.prepare(target, scale, say=say) if prepare else None}
    before = sent() if sent else None
    t0 = time.monotonic()
    clients = plan.clients or getattr(drv, "DEFAULT_CLIENTS", 4)
    run = drv.run(target, duration_s=plan.duration_s, clients=clients, say=say)
    elapsed = time.monotonic() - t0
    after = sent() if sent else None
    point.update(clients=clients, score=run["score"], unit=run["unit"],
                 higher_is_better=run.get("higher_is_better", True), run=run)
    if before is not None and after is not None:
        point["sent_bytes"] = after - before
        point["sent_mb_per_s"] = round((after - before) / elapsed / 1e6, 3)
    point["checks"] = drv.check(target)
    if point["checks"]:
        point["error"] = f"consistency checks failed: {point['checks'][0]}"
    return point


def bench(plan: Plan, out: Path, say: Callable[[str], None] = print) -> dict:
    from remusdb.lab.net import Lab

    drv = driver(plan.name)
    if plan.db not in drv.DBS:
        raise RemusError(f"{plan.name} runs on {', '.join(drv.DBS)}, not {plan.db}")
    scale = check_scale(drv, plan.scale if plan.scale is not None else drv.DEFAULT_SCALE)
    interval = plan.interval_ms or plan.cfg.checkpoint.interval_ms
    result = {"benchmark": plan.name, "db": plan.db, "scale": scale,
              "duration_s": plan.duration_s, "clients": plan.clients, "interval_ms": interval,
              "sweep": {"kind": plan.sweep[0], "values": plan.sweep[1]} if plan.sweep else None,
              "accel": plan.cfg.vm.accel, "memory": plan.cfg.vm.memory,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "points": []}
    base = Path(tempfile.mkdtemp(prefix="remusdb-bench-", dir="/dev/shm"))
    try:
        with Lab() as lab:
            lab.add_tap("primary")
            todo = points(plan)
            for i, (value, mode) in enumerate(todo, 1):
                kind = plan.sweep[0] if plan.sweep else None
                p_interval = value if kind == "interval" else interval
                p_scale = check_scale(drv, value) if kind == "scale" else scale
                pool = value if kind == "buffer-pool" else None
                at = value_label(kind, value)
                label = mode + (f" @ {kind}={at}" if at else "")
                point = {"mode": mode, "sweep_value": value, "interval_ms": p_interval,
                         "scale": p_scale}
                why = unavailable(plan.db, mode)
                if why:
                    say(f"[{i}/{len(todo)}] {label}: not available — {why}")
                    point.update(available=False, reason=why)
                else:
                    say(f"[{i}/{len(todo)}] {label}: starting the VM ...")
                    t0 = time.monotonic()
                    run = base / f"{i}-{mode}"
                    try:
                        with _vm(lab, mode, run, plan, p_interval, pool) as (target, sent):
                            _wait_open(target)
                            point["buffer_pool_bytes"] = buffer_pool_bytes(target)
                            if pool and point["buffer_pool_bytes"] != pool:
                                raise RemusError(f"asked for a {pool >> 20} MB buffer pool, the"
                                                 f" database has {point['buffer_pool_bytes']}")
                            point.update(available=True, **measure(drv, target, plan, p_scale,
                                                                   lambda m: say("    " + m),
                                                                   sent))
                    except RemusError as e:
                        point.update(available=True, error=str(e))
                    except Exception as e:  # noqa: BLE001 - one point fails, the rest run
                        point.update(available=True,
                                     error=f"{type(e).__name__}: {first_line(e)}")
                    if point.get("error"):  # the daemons' logs say why: keep them
                        point["files"] = str(run)
                    else:
                        shutil.rmtree(run, ignore_errors=True)
                    point["wall_s"] = round(time.monotonic() - t0, 1)
                    say(f"[{i}/{len(todo)}] {label}: " + (
                        f"{point['score']:g} {point['unit']}" if "score" in point else "")
                        + (f" — {point['error']}" if point.get("error") else ""))
                result["points"].append(point)
                normalize(result)
                save(result, out)
    finally:
        kept = [p["files"] for p in result["points"] if p.get("files")]
        if kept:
            say(f"kept the files of the failed point(s): {', '.join(kept)}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return result


def external(name: str, target: Target, plan: Plan, out: Path, say=print,
             prepare: bool = True) -> dict:
    """A benchmark against a database that is already there (any host): no VMs, no modes."""
    drv = driver(name)
    scale = check_scale(drv, plan.scale if plan.scale is not None else drv.DEFAULT_SCALE)
    target.open().close()  # unreachable: one line before anything else
    result = {"benchmark": name, "db": target.kind, "at": target.label, "scale": scale,
              "duration_s": plan.duration_s, "clients": plan.clients,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "points": []}
    point = {"mode": "external", "sweep_value": None, "scale": scale}
    point.update(measure(drv, target, plan, scale, lambda m: say("    " + m), prepare=prepare))
    result["points"].append(point)
    save(result, out)
    return result


def external_target(kind: str, at: str, user: str, password: str, dbname: str) -> Target:
    host, _, port = at.partition(":")
    try:
        port_n = int(port) if port else (5432 if kind == "postgres" else 3306)
    except ValueError:
        raise RemusError(f"bad --at {at!r}: expected HOST or HOST:PORT") from None
    make = postgres_target if kind == "postgres" else mariadb_target
    return make(host, port_n, user, password, dbname)
