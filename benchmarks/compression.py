"""ASC codecs on page streams recorded from the real DB guest, and on a synthetic stream.

Streams:
  oltp       pgbench TPC-B (-c 4) against the protected guest: updates, inserts, WAL
  scan       TPC-H-like: repeated large scans and aggregations of a table bigger than a quarter
             of shared_buffers (PostgreSQL reads it through a ring of buffers it keeps rewriting)
  synthetic  Zipf-hot working set, database-like small edits, some whole new pages

For each stream: bytes out / bytes in and MB/s of encode and decode per codec (raw; lz4 and
zstd-1 per batch, no cache, as outside references; xor-rle and xor-lz4 with the page cache),
and the cache-size curve (2.5/5/10/20 % of guest RAM). The baseline measured in the same run is
raw: a copy of the same pages (speed) and their size (bytes).

Recording needs root (namespaces, the VM) and is cached under ~/.cache/remusdb/recordings;
replay needs neither. Run:
    .venv/bin/python benchmarks/compression.py [--epochs 100] [--rerecord] [--streams ...]
"""

import argparse
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import lz4.block
import numpy as np

from benchmarks._common import save
from remusdb.checkpoint.recording import read_epochs
from remusdb.compression import codec
from remusdb.compression.compressor import Compressor

PAGE = 4096
RECORDINGS = Path.home() / ".cache/remusdb/recordings"
CACHE_FRACTIONS = tuple(float(x) for x in os.environ.get(
    "REMUSDB_BENCH_CACHES", "0.025,0.05,0.10,0.20").split(","))
SCAN_SQL = """SELECT bid, sum(abalance), count(*) FROM pgbench_accounts GROUP BY bid;
SELECT count(*) FROM pgbench_accounts WHERE filler LIKE '%x%' OR aid % 97 = 3;
SELECT aid, abalance FROM pgbench_accounts ORDER BY abalance DESC, aid LIMIT 20;
"""


# Recording (root, real guest)

def record(epochs: int, out: Path, scale: int) -> None:
    from remusdb.checkpoint.status import read_status
    from remusdb.lab.daemons import Daemon, wait_status, write_config
    from remusdb.lab.layout import RunLayout
    from remusdb.lab.load import pgbench
    from remusdb.lab.net import Lab

    base = Path(tempfile.mkdtemp(prefix="remusdb-record-", dir="/dev/shm"))
    rec = base / "recordings"
    rec.mkdir()
    script = base / "scan.sql"
    script.write_text(SCAN_SQL)
    try:
        with Lab() as lab:
            lab.add_tap("primary")
            run = RunLayout(base)
            cfg = write_config(run.config, lab, interval_ms=100,
                               optimizations={"compression": "off"})
            sb = Daemon(lab, "standby", ["standby", str(cfg)], run.log("standby"))
            time.sleep(1)
            pr = Daemon(lab, "primary", ["protect", str(cfg), "--record", str(rec),
                                         "--record-epochs", str(epochs)], run.log("primary"))
            status = run.primary_status
            try:
                wait_status(status, lambda s: s["epoch_acked"] >= 1, 300, "protection", [sb, pr])
                print(f"recording: loading pgbench scale {scale} into the guest")
                init = pgbench(lab, "-i", "-s", str(scale), "-q")
                if init.wait(900):
                    raise SystemExit(f"pgbench -i failed: {init.stdout.read()[-500:]}")
                for k, (name, args) in enumerate([
                        ("oltp", ["-c", "4", "-n", "-T", "900"]),
                        ("scan", ["-c", "2", "-n", "-T", "900", "-f", str(script)])], 1):
                    load = pgbench(lab, *args)
                    time.sleep(5)  # steady state
                    print(f"recording: {name}, {epochs} epochs")
                    os.kill(pr.proc.pid, signal.SIGUSR1)
                    wait_status(status, lambda s, k=k: s.get("recordings_done", 0) >= k, 900,
                                f"recording {name}", [sb, pr])
                    load.kill()
                    load.wait()
                    shutil.move(rec / f"recording-{k}.rdbc", out / f"{name}.rdbc")
                meta = read_status(status)
                (out / "meta.json").write_text(json.dumps({
                    "ram_pages": 1 << 18, "interval_ms": 100, "scale": scale,
                    "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "dirty_pages": meta["dirty_pages"]}))
            finally:
                pr.kill()
                sb.kill()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# Streams

def recorded(path: Path):
    for e in read_epochs(path):
        yield e.block.astype(np.uint16), e.index.astype(np.uint64), e.data, \
            (e.zero_block.astype(np.uint16), e.zero_index.astype(np.uint64))


def synthetic(epochs: int, ram_pages: int, seed: int = 1):
    """A Zipf-hot working set of 'database pages': a few small edits and a new LSN per write,
    and 5% of writes replacing a page with new text-like content."""
    rng = np.random.default_rng(seed)
    hot = rng.choice(ram_pages, 60_000, replace=False)
    words = rng.integers(97, 123, (256, 16), dtype=np.uint8)  # a small vocabulary
    content = {}
    for _ in range(epochs):
        picks = np.unique(hot[np.minimum(rng.zipf(1.2, 3000), len(hot)) - 1])
        data = np.empty((len(picks), PAGE), np.uint8)
        for k, p in enumerate(picks):
            page = content.get(p)
            if page is None or rng.random() < 0.05:
                page = words[rng.integers(0, 256, PAGE // 16)].reshape(PAGE)
                page[rng.integers(0, PAGE, 200)] = rng.integers(0, 256, 200, dtype=np.uint8)
            else:
                page = page.copy()
                page[:8] = rng.integers(0, 256, 8, dtype=np.uint8)  # LSN
                for _ in range(int(rng.integers(1, 4))):
                    at = int(rng.integers(24, PAGE - 64))
                    page[at : at + int(rng.integers(4, 48))] = rng.integers(0, 256, dtype=np.uint8)
            content[p] = page
            data[k] = page
        yield (np.zeros(len(picks), np.uint16), picks.astype(np.uint64), data,
               (np.empty(0, np.uint16), np.empty(0, np.uint64)))


def batches(stream):
    for block, index, data, zeros in stream:
        for k in range(0, len(index), codec.MAX_PAGES):
            yield block[k : k + codec.MAX_PAGES], index[k : k + codec.MAX_PAGES], \
                np.ascontiguousarray(data[k : k + codec.MAX_PAGES]), None
        yield None, None, None, zeros


# Codecs

def run_copy(stream) -> dict:
    pages = 0
    t = 0.0
    buf = np.empty((codec.MAX_PAGES, PAGE), np.uint8)
    for _, _, data, _ in batches(stream):
        if data is None:
            continue
        t0 = time.perf_counter()
        buf[: len(data)] = data
        t += time.perf_counter() - t0
        pages += len(data)
    return {"bytes_in": pages * PAGE, "bytes_out": pages * PAGE, "encode_s": t, "decode_s": t}


def run_block_codec(stream, compress, decompress) -> dict:
    bin_ = bout = 0
    te = td = 0.0
    for _, _, data, _ in batches(stream):
        if data is None:
            continue
        t0 = time.perf_counter()
        out = compress(data)
        t1 = time.perf_counter()
        back = decompress(out, data.nbytes)
        td += time.perf_counter() - t1
        te += t1 - t0
        assert len(back) == data.nbytes
        bin_ += data.nbytes
        bout += len(out)
    return {"bytes_in": bin_, "bytes_out": bout, "encode_s": te, "decode_s": td}


def run_asc(stream, mode: str, cache_pages: int, ram_pages: int, check: bool) -> dict:
    comp = Compressor(mode, [ram_pages], cache_pages)
    image = np.zeros((ram_pages, PAGE), np.uint8)  # the standby's RAM: the XOR base
    te = td = 0.0
    bin_ = bout = 0
    for block, index, data, zeros in batches(stream):
        if data is None:
            comp.forget(*zeros)
            image[zeros[1].astype(np.int64)] = 0
            continue
        t0 = time.perf_counter()
        out = comp.batch(block, index, data)
        t1 = time.perf_counter()
        _, idx, pages = codec.decode(out, lambda rows, i=index: image[i[rows].astype(np.int64)])
        td += time.perf_counter() - t1
        te += t1 - t0
        image[idx.astype(np.int64)] = pages
        if check and not np.array_equal(pages, data):
            raise SystemExit(f"{mode}: decoded pages differ from the originals")
        bin_ += data.nbytes
        bout += len(out)
    s = comp.summary()
    return {"bytes_in": bin_, "bytes_out": bout, "encode_s": te, "decode_s": td,
            "codec_s": comp.seconds - comp.cache_seconds, "hit_rate": s["cache"]["hit_rate"],
            "pages_by_codec": s["pages_by_codec"], "cache_mib": s["cache"]["memory_mib"]}


def finish(r: dict, copy: dict) -> dict:
    mb = r["bytes_in"] / 1e6
    out = {"ratio": round(r["bytes_out"] / r["bytes_in"], 4) if r["bytes_in"] else None,
           "encode_mb_s": round(mb / r["encode_s"], 1) if r["encode_s"] else None,
           "decode_mb_s": round(mb / r["decode_s"], 1) if r["decode_s"] else None}
    if r.get("codec_s"):  # the codec alone, without the page cache's gather and scatter
        out["codec_mb_s"] = round(mb / r["codec_s"], 1)
    if copy["encode_s"] and r["encode_s"]:
        out["encode_time_vs_copy"] = round(r["encode_s"] / copy["encode_s"], 2)
    return {**out, **{k: v for k, v in r.items() if k in ("hit_rate", "pages_by_codec",
                                                           "cache_mib")}}


def measure(name: str, make_stream, ram_pages: int, check: bool) -> dict:
    import zstandard

    zc = zstandard.ZstdCompressor(level=1)
    zd = zstandard.ZstdDecompressor()
    first = list(make_stream())
    pages = sum(len(b[1]) for b in first)
    print(f"\n{name}: {len(first)} epochs, {pages} dirty pages "
          f"({pages * PAGE / 2**20:.0f} MiB), guest RAM {ram_pages * PAGE >> 20} MiB")
    copy = run_copy(first)
    rows = {"raw": finish(copy, copy),
            "lz4 (no cache)": finish(run_block_codec(
                first, lambda d: lz4.block.compress(d, store_size=False),
                lambda o, n: lz4.block.decompress(o, uncompressed_size=n)), copy),
            "zstd-1 (no cache)": finish(run_block_codec(
                first, zc.compress, lambda o, n: zd.decompress(o, max_output_size=n)), copy)}
    for mode in codec.MODES:
        for frac in CACHE_FRACTIONS:
            rows[f"{mode} cache {frac:.1%}"] = finish(
                run_asc(first, mode, int(ram_pages * frac), ram_pages, check), copy)
    print(f"  {'codec':24s} {'out/in':>8s} {'enc MB/s':>9s} {'codec MB/s':>10s} "
          f"{'dec MB/s':>9s} {'enc/copy':>8s} {'hit rate':>8s}")
    for k, r in rows.items():
        print(f"  {k:24s} {r['ratio']:8.4f} {r['encode_mb_s'] or 0:9.0f} "
              f"{r.get('codec_mb_s', r['encode_mb_s']) or 0:10.0f} "
              f"{r['decode_mb_s'] or 0:9.0f} {r.get('encode_time_vs_copy', 0):8.1f} "
              f"{r.get('hit_rate') if r.get('hit_rate') is not None else '':>8}")
    return {"epochs": len(first), "dirty_pages": pages, "codecs": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=100, help="epochs per recorded stream")
    ap.add_argument("--scale", type=int, default=5, help="pgbench scale of the recorded DB")
    ap.add_argument("--streams", default="oltp,scan,synthetic")
    ap.add_argument("--rerecord", action="store_true")
    ap.add_argument("--check", action="store_true", help="compare every decoded page")
    args = ap.parse_args()
    streams = args.streams.split(",")
    RECORDINGS.mkdir(parents=True, exist_ok=True)
    have = all((RECORDINGS / f"{s}.rdbc").exists() for s in streams if s != "synthetic")
    if not have or args.rerecord:
        if os.geteuid() != 0:
            raise SystemExit("recording the guest's page streams needs root")
        record(args.epochs, RECORDINGS, args.scale)
    meta = json.loads((RECORDINGS / "meta.json").read_text()) if (
        RECORDINGS / "meta.json").exists() else {"ram_pages": 1 << 18}
    ram_pages = meta["ram_pages"]
    result = {"recording": meta, "streams": {}}
    for s in streams:
        if s == "synthetic":
            result["streams"][s] = measure(s, lambda: synthetic(args.epochs, ram_pages),
                                           ram_pages, args.check)
        else:
            path = RECORDINGS / f"{s}.rdbc"
            result["streams"][s] = measure(s, lambda p=path: recorded(p), ram_pages,
                                           args.check)
    save("compression", result)


if __name__ == "__main__":
    main()
