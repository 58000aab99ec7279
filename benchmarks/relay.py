"""Net relay microbenchmark, no VM: the cost of the relay's hop and its frame rate.

Two namespaces, A (the guest's side) and B (the world). Paths, measured in the same run:
  veth   A ─veth─ B                                          (the issue's baseline)
  qemu   A ─tapA─ QEMU hub ─tapB─ B                          (QEMU's own hop, no relay)
  relay  A ─tapA─ QEMU hub ─stream socket─ relay ─tapB─ B    (production's path)
The relay runs in three buffer modes: passthrough (not protecting), cp (protecting, the echo
server's socket marked unprotected: every reply classified and let through), remus (every frame
held; in both a mark + release every 10 ms, like checkpoints). Round trip: UDP echo, B → A → B,
median of N.
Frame rate: A sends small UDP datagrams flat out for a few seconds; the rate is what reaches B.

  .venv/bin/python benchmarks/relay.py [--round-trips 5000] [--seconds 3]     (root)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from pyroute2 import netns

from benchmarks._common import save
from remusdb.commitprotect.outbuf import OutputBuffer
from remusdb.commitprotect.relay import NetRelay

CODEPOINT = 11
A_IP, B_IP = "10.99.0.1", "10.99.0.2"
ECHO = f"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, int(sys.argv[1]) << 2)
s.bind(("{A_IP}", 9000))
while True:
    d, a = s.recvfrom(2048)
    s.sendto(d, a)
"""
PING = f"""
import socket, sys, time, statistics
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
n = int(sys.argv[1]); rtts = []
for i in range(n + 200):
    t = time.perf_counter_ns()
    s.sendto(b"x" * 32, ("{A_IP}", 9000))
    s.recv(2048)
    if i >= 200:
        rtts.append(time.perf_counter_ns() - t)
print(statistics.median(rtts) / 1000, sorted(rtts)[int(0.99 * n)] / 1000)
"""
BLAST = f"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, int(sys.argv[2]) << 2)
end = time.monotonic() + float(sys.argv[1]); n = 0; p = b"y" * 18
while time.monotonic() < end:
    for _ in range(100):
        s.sendto(p, ("{B_IP}", 9001))
    n += 100
print(n)
"""


def sh(*cmd: str, ns: str | None = None) -> None:
    full = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    subprocess.run(full, check=True, capture_output=True)


def py(ns: str, code: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *args],
                            stdout=subprocess.PIPE, text=True, **kw)


def rx_packets(ns: str, dev: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", ns, "cat",
                          f"/sys/class/net/{dev}/statistics/rx_packets"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


class Topology:
    def __init__(self, kind: str, tmp: Path):
        self.kind, self.tmp = kind, tmp
        self.a, self.b = f"rbench{os.getpid()}a", f"rbench{os.getpid()}b"
        self.qemu = None
        self.sock = tmp / "net.sock"

    def __enter__(self):
        for ns in (self.a, self.b):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", ns=ns)
        if self.kind == "veth":
            sh("ip", "link", "add", "va", "netns", self.a, "type", "veth", "peer", "name", "vb",
               "netns", self.b)
            self.a_dev, self.b_dev = "va", "vb"
        else:
            sh("ip", "tuntap", "add", "tapA", "mode", "tap", ns=self.a)
            second = ["-netdev", "tap,id=t1,ifname=tapB,script=no,downscript=no"]
            if self.kind == "qemu":
                sh("ip", "tuntap", "add", "tapB", "mode", "tap", ns=self.a)
            else:
                second = ["-netdev", f"stream,id=t1,server=on,addr.type=unix,"
                                     f"addr.path={self.sock}"]
                sh("ip", "tuntap", "add", "tapB", "mode", "tap", ns=self.b)
            self.qemu = subprocess.Popen(
                ["ip", "netns", "exec", self.a, "qemu-system-x86_64", "-machine", "none",
                 "-nodefaults", "-display", "none",
                 "-netdev", "tap,id=t0,ifname=tapA,script=no,downscript=no", *second,
                 "-netdev", "hubport,id=h0,hubid=0,netdev=t0",
                 "-netdev", "hubport,id=h1,hubid=0,netdev=t1"], stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            if self.kind == "qemu":  # QEMU holds tapB's fd: the device can move
                sh("ip", "link", "set", "tapB", "netns", self.b, ns=self.a)
            self.a_dev, self.b_dev = "tapA", "tapB"
        for ns, dev, ip in ((self.a, self.a_dev, A_IP), (self.b, self.b_dev, B_IP)):
            sh("ip", "addr", "add", f"{ip}/24", "dev", dev, ns=ns)
            sh("ip", "link", "set", dev, "up", ns=ns)
        return self

    def __exit__(self, *exc):
        if self.qemu:
            self.qemu.kill()
            self.qemu.wait()
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def open_relay(top: Topology, buffer: OutputBuffer) -> NetRelay:
    netns.pushns(top.b)
    try:
        return NetRelay.open(top.sock, "tapB", buffer).start()
    finally:
        netns.popns()


def measure(top: Topology, args, tos: int) -> dict:
    echo = py(top.a, ECHO, str(tos))
    try:
        time.sleep(0.5)
        ping = py(top.b, PING, str(args.round_trips))
        out, _ = ping.communicate(timeout=120)
        if ping.returncode:
            raise RuntimeError("round trips failed (no echo through this path)")
        median, p99 = map(float, out.split())
    finally:
        echo.kill()
        echo.wait()
    before = rx_packets(top.b, top.b_dev)
    blast = py(top.a, BLAST, str(args.seconds), str(tos))
    sent = int(blast.communicate(timeout=60)[0])
    got = rx_packets(top.b, top.b_dev) - before
    return {"rtt_us": round(median, 1), "rtt_p99_us": round(p99, 1),
            "frames_per_s": round(got / args.seconds), "offered_per_s": round(sent / args.seconds)}


def run_relay(top: Topology, args, mode: str) -> dict:
    buffer = OutputBuffer(cp=(mode == "cp"), codepoint=CODEPOINT)
    relay = open_relay(top, buffer)
    stop = threading.Event()
    epochs = threading.Thread()
    if mode != "passthrough":
        relay.mark(0)
        relay.release(0)
    if mode != "passthrough":  # ARP and the like are protected: epochs must advance
        def checkpoints():
            n = 1
            while not stop.wait(0.01):
                relay.mark(n)
                relay.release(n)
                n += 1
        epochs = threading.Thread(target=checkpoints, daemon=True)
        epochs.start()
    try:
        r = measure(top, args, CODEPOINT if mode == "cp" else 0)
    finally:
        stop.set()
        if epochs.is_alive():
            epochs.join()
        summary = relay.summary()
        relay.close()
    if relay.error:
        raise RuntimeError(f"relay failed: {relay.error}")
    r["relay"] = {k: summary[k] for k in ("unprotected", "held", "released", "passed",
                                          "dropped_to_world", "dropped_to_guest")}
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--round-trips", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("relay benchmark: needs root (namespaces, taps)", file=sys.stderr)
        return 2
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("veth", "qemu"):
            with Topology(kind, Path(tmp)) as top:
                results[kind] = measure(top, args, 0)
                print(f"{kind:18} {results[kind]}", flush=True)
        for mode in ("passthrough", "cp", "remus"):
            with Topology("relay", Path(tmp)) as top:
                results[f"relay-{mode}"] = run_relay(top, args, mode)
                print(f"relay-{mode:12} {results[f'relay-{mode}']}", flush=True)
    base, qemu = results["veth"]["rtt_us"], results["qemu"]["rtt_us"]
    for k, r in results.items():
        r["rtt_ratio_to_veth"] = round(r["rtt_us"] / base, 2)
        if k.startswith("relay") and k != "relay-remus":
            # both directions cross the relay once: half the extra round trip is one hop
            r["added_us_per_hop"] = round((r["rtt_us"] - qemu) / 2, 1)
    print("\nadded per frame per hop (relay − QEMU-only, half a round trip): " + ", ".join(
        f"{k}: {r['added_us_per_hop']} µs" for k, r in results.items() if "added_us_per_hop" in r))
    print("frames/s through the relay (guest → world): " + ", ".join(
        f"{k}: {r['frames_per_s']}" for k, r in results.items() if k.startswith("relay")))
    save("relay", {"round_trips": args.round_trips, "seconds": args.seconds,
                   "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
