"""What the checkpoint link's TLS costs, against plain TCP measured in the same run:

1. stream throughput: 16 MiB PAGES frames from one process to another over loopback, through
   wire.Connection (TLS 1.3 with the pair's keys, or link.insecure), MB/s;
2. checkpoint pause and TPS on the real DB guest, idle and under pgbench -S, protected at one
   interval with TLS and then without.

Needs root for (2) (namespaces). Run:
    .venv/bin/python benchmarks/link.py [--interval 100] [--seconds 15] [--stream-mib 1024]
        [--full-copies 3] [--no-vm]
"""

import argparse
import multiprocessing
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import save
from remusdb.checkpoint import keys, wire
from remusdb.checkpoint.link import Link
from remusdb.config import Config

FRAME = wire.PAGES_PER_FRAME * (4096 + 10) + 4


def _config(key_dir: Path, insecure: bool) -> Config:
    cfg = Config()
    cfg.link.keys, cfg.link.insecure = str(key_dir), insecure
    return cfg


def _receiver(cfg: Config, srv: socket.socket, done) -> None:
    sock, _ = srv.accept()
    conn = wire.Connection(Link.for_host(cfg, "standby").accept(sock))
    got = 0
    while True:
        f = conn.recv()
        if f.kind == wire.Kind.BYE:
            break
        got += len(f.payload)
    done.put(got)


def stream_mb_s(key_dir: Path, insecure: bool, total_mib: int) -> float:
    cfg = _config(key_dir, insecure)
    srv = socket.create_server(("127.0.0.1", 0))
    done = multiprocessing.Queue()
    rx = multiprocessing.Process(target=_receiver, args=(cfg, srv, done))
    rx.start()
    sock = socket.create_connection(srv.getsockname())
    conn = wire.Connection(Link.for_host(cfg, "primary").client(sock))
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (wire.PAGES_PER_FRAME, 4096), np.uint8)  # incompressible
    payload = wire.pack_pages(np.zeros(len(data), np.uint16),
                              np.arange(len(data), dtype=np.uint64), data)
    frames = max(1, (total_mib << 20) // len(payload))
    t0 = time.perf_counter()
    for i in range(frames):
        conn.send(wire.encode(wire.Kind.PAGES, i, payload))
    conn.send(wire.encode(wire.Kind.BYE, frames))
    got = done.get(timeout=600)
    elapsed = time.perf_counter() - t0
    rx.join()
    conn.close()
    srv.close()
    assert got == frames * len(payload)
    return got / elapsed / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--interval", type=int, default=100)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--stream-mib", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-vm", action="store_true", help="the stream throughput only")
    ap.add_argument("--full-copies", type=int, default=3,
                    help="full copies per mode, alternating, besides the measured session")
    args = ap.parse_args()
    result: dict = {"stream": {}, "checkpoint": {}}
    key_dir = Path(tempfile.mkdtemp()) / "keys"
    keys.init(key_dir, "bench")
    try:
        for mode, insecure in (("tls", False), ("insecure", True)):
            runs = [stream_mb_s(key_dir, insecure, args.stream_mib) for _ in range(args.repeats)]
            result["stream"][mode] = {"mb_s": round(max(runs), 1), "runs": [round(r, 1)
                                                                            for r in runs]}
            print(f"stream {mode:8s}: {max(runs):7.1f} MB/s (best of {runs})")
    finally:
        shutil.rmtree(key_dir.parent)
    ratio = result["stream"]["tls"]["mb_s"] / result["stream"]["insecure"]["mb_s"]
    result["stream"]["tls_vs_insecure"] = round(ratio, 3)
    print(f"stream: TLS at {ratio:.3f} of plain TCP")
    if not args.no_vm:
        result["checkpoint"] = checkpoint_pauses(args.interval, args.seconds, args.full_copies)
    save("link", result)


def checkpoint_pauses(interval: int, seconds: int, full_copies: int) -> dict:
    from benchmarks.checkpoint import protected, unprotected
    from remusdb.lab.net import Lab

    base = Path("/dev/shm") / f"remusdb-bench-{os.getpid()}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir()
    out: dict = {}
    try:
        with Lab() as lab:
            lab.add_tap("primary")
            out["unprotected_tps"] = unprotected(lab, base, seconds)
            for mode, insecure in (("tls", False), ("insecure", True)):
                r = protected(lab, base, interval, seconds, insecure=insecure)
                out[mode] = r
                for phase in ("idle", "pgbench"):
                    p = r[phase]
                    print(f"{mode:8s} {phase:8s} pause p50 {p['pause_ms'].get('p50')} p99 "
                          f"{p['pause_ms'].get('p99')} ms, bytes/epoch p50 "
                          f"{p['bytes_per_epoch'].get('p50')}, daemon CPU "
                          f"{p['daemon_cpu_s_per_s']} s/s"
                          + (f", {p['tps']:.0f} TPS" if p["tps"] else ""))
            copies: dict = {"tls": [out["tls"]["full_copy"]],
                            "insecure": [out["insecure"]["full_copy"]]}
            for k in range(full_copies):  # one full copy is too noisy to judge a 10% bar by
                for mode, insecure in (("tls", False), ("insecure", True)):
                    fc = protected(lab, base, interval, 0, insecure=insecure, phases=(),
                                   tag=f"-copy{k}")["full_copy"]
                    copies[mode].append(fc)
                    print(f"full copy {k + 1}/{full_copies} {mode:8s}: {fc.get('mb_s')} MB/s")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    rates = {m: sorted(f["mb_s"] for f in copies[m] if f.get("mb_s")) for m in copies}
    out["full_copies_mb_s"] = rates
    if all(rates.values()):
        med = {m: float(np.median(r)) for m, r in rates.items()}
        out["full_copy_tls_vs_insecure"] = round(med["tls"] / med["insecure"], 3)
        print(f"full copy (median of {len(rates['tls'])}): TLS {med['tls']:.1f} MB/s, plain "
              f"{med['insecure']:.1f} MB/s ({out['full_copy_tls_vs_insecure']}x)")
    for phase in ("idle", "pgbench"):
        d = out["tls"][phase]["pause_ms"]["p50"] - out["insecure"][phase]["pause_ms"]["p50"]
        out[f"{phase}_pause_p50_tls_minus_insecure_ms"] = round(d, 2)
        print(f"{phase}: TLS adds {d:+.2f} ms to the pause p50")
    return out


if __name__ == "__main__":
    main()
