"""The disk server against direct file access, with real clients (fio over NBD via libnbd, fio
on the file), and against nbdkit (its C file plugin: the ceiling of an NBD server here; its
Python plugin: the alternative to writing our own). 4 KiB random read/write IOPS at queue depth
16 and 1 MiB sequential MB/s, as ratios to direct access measured in the same run. Run:
    .venv/bin/python benchmarks/disk.py [--seconds 5] [--dir /dev/shm]
"""

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from benchmarks._common import save
from remusdb.disk.server import DiskServer

SIZE = 1 << 30
JOBS = {"randread 4K": ("randread", "4k"), "randwrite 4K": ("randwrite", "4k"),
        "read 1M": ("read", "1m"), "write 1M": ("write", "1m")}
PLUGIN = '''
import os
API_VERSION = 2
path = None
def config(key, value):
    global path
    path = value
def open(readonly):
    return os.open(path, os.O_RDWR)
def get_size(h):
    return os.fstat(h).st_size
def pread(h, buf, offset, flags):
    buf[:] = os.pread(h, len(buf), offset)
def pwrite(h, buf, offset, flags):
    os.pwrite(h, buf, offset)
def flush(h, flags):
    os.fdatasync(h)
'''


def fio(target: dict, rw: str, bs: str, seconds: int) -> dict:
    args = ["fio", "--name=b", f"--rw={rw}", f"--bs={bs}", "--iodepth=16", f"--size={SIZE}",
            f"--runtime={seconds}", "--time_based", "--output-format=json", "--numjobs=1"]
    if "uri" in target:
        args += ["--ioengine=nbd", f"--uri={target['uri']}"]
    else:
        args += ["--ioengine=libaio", f"--filename={target['file']}"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 120)
    if r.returncode != 0:
        raise SystemExit(f"fio failed: {r.stderr.strip()[-400:]}")
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]  # after "connected to NBD"
    side = job["read"] if "read" in rw else job["write"]
    return {"iops": round(side["iops"]), "mb_s": round(side["bw_bytes"] / 1e6, 1)}


def wait_socket(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no NBD server at {path}")
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--dir", default="/dev/shm")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="remusdb-diskbench-", dir=args.dir))
    img = work / "disk.raw"
    with open(img, "wb") as f:
        for _ in range(SIZE >> 24):
            f.write(os.urandom(1 << 24))
    results = {}
    procs = []
    try:
        targets = {"direct file": {"file": str(img)}}
        srv = DiskServer(img, work / "remusdb.sock")
        srv.start()
        stop = threading.Event()

        def epochs():  # as the primary daemon does: each epoch's writes go and are let go
            while not stop.wait(0.1):
                srv.writes.cut()
        threading.Thread(target=epochs, daemon=True).start()
        targets["remusdb disk server"] = {"uri": f"nbd+unix:///disk?socket={srv.socket_path}"}
        plugin = work / "plugin.py"
        plugin.write_text(PLUGIN)
        for name, cmd in (("nbdkit file (C)", ["file", f"file={img}"]),
                          ("nbdkit python plugin", ["python", str(plugin), f"path={img}"])):
            sock = work / f"{len(procs)}.sock"
            procs.append(subprocess.Popen(["nbdkit", "-f", "-U", str(sock), *cmd],
                                          stderr=subprocess.DEVNULL))
            wait_socket(sock)
            targets[name] = {"uri": f"nbd+unix:///?socket={sock}"}
        for job, (rw, bs) in JOBS.items():
            row = {}
            for name, target in targets.items():
                row[name] = fio(target, rw, bs, args.seconds)
            base = row["direct file"]
            for r in row.values():
                key = "iops" if "4K" in job else "mb_s"
                r["vs_direct"] = round(r[key] / base[key], 3) if base[key] else None
            results[job] = row
            print(f"{job}:")
            for name, r in row.items():
                print(f"  {name:24s} {r['iops']:9d} IOPS {r['mb_s']:9.1f} MB/s  "
                      f"{r['vs_direct']:.2f}x direct")
        stop.set()
        srv.close()
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        shutil.rmtree(work, ignore_errors=True)
    save("disk", {"size": SIZE, "seconds": args.seconds, "dir": args.dir, "results": results})


if __name__ == "__main__":
    main()
