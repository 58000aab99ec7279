"""The lab's witness: one etcd member in a host namespace of its own, and the partitions a
drill cuts between the lab's hosts (nftables rules in a host's namespace, or its uplink down).

etcd is Debian's `etcd-server`, started as a plain process (no systemd) with its data in the
run directory; a partition drops a host's IP traffic to and from the named hosts only (the VM's
frames cross the bridge, untouched), or unplugs the host's uplink (everything, the VM too).
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from remusdb.errors import RemusError
from remusdb.hypervisor.qemu import die_with_parent
from remusdb.witness.etcd import EtcdWitness
from remusdb.witness.rules import WitnessError

HOST = "witness"
PORT = 2379
TABLE = "remusdb_cut"
_HANDLED = re.compile(r'^grpc_server_handled_total\{[^}]*grpc_method="(?P<method>\w+)"[^}]*\}'
                      r' (?P<n>[0-9.e+]+)$', re.M)


class LabWitness:
    """etcd on the lab's witness host; use as a context manager."""

    def __init__(self, lab, run: Path, host: str = HOST, port: int = PORT):
        self.lab, self.run, self.host, self.port = lab, Path(run), host, port
        self.proc: subprocess.Popen | None = None

    @property
    def ip(self) -> str:
        return self.lab.members[self.host].address.split("/")[0]

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def __enter__(self) -> LabWitness:
        data = self.run / "etcd"
        data.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{self.port + 1}"
        log = open(self.run / "etcd.log", "ab")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.lab.ns(self.host)}", "--", "etcd",
             "--name", "lab", "--data-dir", str(data / "data"),
             "--listen-client-urls", f"{self.url},http://127.0.0.1:{self.port}",
             "--advertise-client-urls", self.url, "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer, "--initial-cluster", f"lab={peer}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent)  # a drill killed with -9 leaves no etcd behind
        log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self.lab.inside(self.host):
            client = EtcdWitness([f"http://127.0.0.1:{self.port}"], "probe")
            while True:
                try:
                    client.view()
                    return
                except WitnessError as e:
                    if self.proc is not None and self.proc.poll() is not None:
                        raise RemusError(f"etcd exited ({self.proc.returncode}): see "
                                         f"{self.run / 'etcd.log'}") from None
                    if time.monotonic() > deadline:
                        raise RemusError(f"etcd did not answer in {timeout:.0f} s: {e}") from None
                time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def handled(self) -> dict[str, float]:
        """etcd's own count of the requests it handled, per gRPC method (its /metrics): the
        witness's load, whatever the client."""
        import requests
        with self.lab.inside(self.host):
            text = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        counts: dict[str, float] = {}
        for m in _HANDLED.finditer(text):
            counts[m["method"]] = counts.get(m["method"], 0.0) + float(m["n"])
        return counts


def _nft(lab, host: str, script: str) -> None:
    r = subprocess.run(["nsenter", f"--net=/run/netns/{lab.ns(host)}", "--", "nft", "-f", "-"],
                       input=script, text=True, capture_output=True)
    if r.returncode != 0:
        raise RemusError(f"nft in {host}: {r.stderr.strip()}")


def cut(lab, host: str, others: list[str]) -> None:
    """`host` no longer exchanges IP packets with `others` (each way), in its own namespace."""
    ips = ", ".join(lab.members[o].address.split("/")[0] for o in others)
    _nft(lab, host, f"""table inet {TABLE} {{
  chain input {{ type filter hook input priority -10; ip saddr {{ {ips} }} drop; }}
  chain output {{ type filter hook output priority -10; ip daddr {{ {ips} }} drop; }}
}}
""")


def heal(lab, host: str) -> None:
    _nft(lab, host, f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")


def unplug(lab, host: str, up: bool = False) -> None:
    """The host's uplink down (or up again): cut from everything, its VM too."""
    r = subprocess.run(["ip", "-n", lab.ns(host), "link", "set", "eth0", "up" if up else "down"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RemusError(f"ip link in {host}: {r.stderr.strip()}")
