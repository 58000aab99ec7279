"""Output commit and commit protection against the real guest and its PostgreSQL.

What a client sees is captured in the client's namespace (AF_PACKET, kernel timestamps) and
matched, frame by frame (xxh3), with the relay's trace (which epoch held each frame) and the
standby's (when it committed each epoch): a frame held for epoch N must reach the client only
after the standby committed N. Then a kill -9 in the middle of transactions.
"""

import select
import signal
import socket
import statistics
import threading
import time
from collections import defaultdict

import psycopg2
from xxhash import xxh3_64_hexdigest

from remusdb.lab import dbclient
from remusdb.lab.daemons import Protected, wait_status
from remusdb.lab.layout import RunLayout
from remusdb.lab.net import VM_IP

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # linux/asm-generic/socket.h
COMMIT_ACK = b"C\x00\x00\x00\x0bCOMMIT\x00Z"  # CommandComplete "COMMIT", then ReadyForQuery


class Capture(threading.Thread):
    """Every frame that reaches the client host, with the kernel's arrival time."""

    def __init__(self, lab):
        super().__init__(daemon=True)
        with lab.inside("client"):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
            self.sock.bind(("eth0", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.settimeout(0.2)
        self.frames: list[tuple[float, bytes]] = []
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                data, anc, _, _ = self.sock.recvmsg(65536, 64)
            except TimeoutError:
                continue
            t = next((int.from_bytes(d[:8], "little") + int.from_bytes(d[8:16], "little") / 1e9
                      for lvl, typ, d in anc if typ == SO_TIMESTAMPNS), time.time())
            self.frames.append((t, data))

    def stop(self):
        self.done.set()
        self.join()
        self.sock.close()
        return self.frames


def relay_trace(path):
    """xxh3 -> [(how, epoch, time)] from `remusdb protect --net-trace`."""
    out = defaultdict(list)
    for line in path.read_text().splitlines():
        t, how, epoch, digest = line.split(",")
        out[digest].append((how, int(epoch), float(t)))
    return out


def commit_times(path):
    return {int(e): float(t) for t, e in (ln.split(",") for ln in path.read_text().splitlines())}


def check_relay_log(trace, commits):
    """The relay's own account: each held frame released by an ack of its epoch or a later one,
    after the standby committed that epoch. Returns the frames checked."""
    checked = 0
    for digest, entries in trace.items():
        held = sorted(e for h, e, _ in entries if h == "h")
        released = sorted((e, t) for h, e, t in entries if h == "r" and e >= 0)  # -1: stop
        if not held or not released:
            continue  # still held at the end, or never held
        for e, (ack, t) in zip(held, released, strict=False):
            assert ack >= e and t >= commits[e], (digest, e, ack, t, commits.get(e))
            checked += 1
    return checked


def check_release_after_commit(capture, trace, commits):
    """Every captured guest frame that the relay held: seen by the client only after the
    standby committed its epoch. Returns (held frames seen, frames seen unprotected)."""
    held = unprotected = 0
    for t, frame in capture:
        entries = trace.get(xxh3_64_hexdigest(frame))
        if not entries:
            continue  # not the guest's (the client's own frames, ARP from hosts)
        hows = {h for h, _, _ in entries}
        if "h" in hows:
            # the earliest epoch such a frame was held for: the weakest bound, still a bound
            epoch = min(e for h, e, _ in entries if h == "h")
            assert epoch in commits, f"frame held for epoch {epoch}, never committed"
            assert t >= commits[epoch], (
                f"the client had a frame of epoch {epoch} {1000 * (commits[epoch] - t):.2f} ms "
                f"before the standby committed that epoch")
            held += 1
        elif "u" in hows:
            unprotected += 1
    return held, unprotected


def traced(lab, base, cp: bool, interval_ms: int):
    run = RunLayout(base)
    return Protected(lab, base, interval_ms=interval_ms, optimizations={"cp": cp},
                     protect_args=("--net-trace", str(run.net_trace)),
                     standby_args=("--trace", str(run.standby_trace)))


def timed(cur, sql):
    t = time.monotonic()
    cur.execute(sql)
    return time.monotonic() - t


def test_remus_output_commit_holds_every_frame_until_its_epoch_is_committed(lab, base):
    interval = 100
    with traced(lab, base, cp=False, interval_ms=interval) as p:
        cap = Capture(lab)
        cap.start()
        with lab.inside("client"):
            conn = dbclient.postgres(VM_IP, timeout=30)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                timed(cur, "SELECT 1")
                rtt = [timed(cur, "SELECT 1") for _ in range(30)]
        finally:
            conn.close()
            time.sleep(0.5)
            frames = cap.stop()
    trace, commits = relay_trace(p.layout.net_trace), commit_times(p.layout.standby_trace)
    held, unprotected = check_release_after_commit(frames, trace, commits)
    assert check_relay_log(trace, commits) >= held
    print(f"Remus: round trip p50 {statistics.median(rtt) * 1000:.0f} ms at a {interval} ms "
          f"interval; {held} held frames checked against commit times")
    assert held >= 30 and unprotected == 0  # 30 answers at least, and the handshake
    # Each answer waits for the next checkpoint and its ack: about an interval per round trip.
    assert statistics.median(rtt) >= 0.3 * interval / 1000


def test_commit_protection_releases_results_at_once_and_holds_commit_acks(lab, base):
    interval = 200
    with traced(lab, base, cp=True, interval_ms=interval) as p:
        cap = Capture(lab)
        cap.start()
        with lab.inside("client"):
            conn = dbclient.postgres(VM_IP, timeout=30, sslmode="disable")  # to read the acks
        inside, commits = [], []
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE TABLE IF NOT EXISTS cp_t (id int PRIMARY KEY, v int)")
                conn.commit()
                for txn in range(6):
                    for i in range(5):
                        inside.append(timed(cur, f"INSERT INTO cp_t VALUES ({txn * 10 + i}, 0)"))
                        inside.append(timed(cur, "SELECT count(*) FROM cp_t"))
                    t = time.monotonic()
                    conn.commit()
                    commits.append(time.monotonic() - t)
        finally:
            conn.close()
            time.sleep(0.5)
            frames = cap.stop()
        net = p.status("primary")["net"]
    trace = relay_trace(p.layout.net_trace)
    held, unprotected = check_release_after_commit(frames, trace,
                                                   commit_times(p.layout.standby_trace))
    acks = [f for _, f in frames if COMMIT_ACK in f]
    ack_hows = [{h for h, _, _ in trace[xxh3_64_hexdigest(f)]} for f in acks]
    print(f"CP: in-transaction p50 {statistics.median(inside) * 1000:.0f} ms, commit p50 "
          f"{statistics.median(commits) * 1000:.0f} ms at {interval} ms; {held} held and "
          f"{unprotected} unprotected frames seen; relay {net}")
    # every commit acknowledgement was held for its epoch (and checked against its commit)
    assert len(acks) >= 7 and all("h" in h for h in ack_hows), ack_hows
    # statements inside a transaction do not wait for checkpoints; commits do
    assert unprotected >= 60
    assert statistics.median(inside) < 0.5 * interval / 1000
    assert statistics.median(inside) * 3 < statistics.median(commits)


def test_failover_mid_transactions_keeps_acknowledged_commits_and_aborts_the_rest(lab, base):
    acked: list[int] = []
    open_ids: list[int] = []
    to_error: list[float] = []
    killed_at = [0.0]
    stop_load = threading.Event()
    lock = threading.Lock()

    def connect():
        with lab.inside("client"):
            return dbclient.postgres(VM_IP, timeout=30, tcp_user_timeout=20_000,
                                     keepalives_idle=5, keepalives_interval=2,
                                     keepalives_count=3)

    def committer(k):
        conn, n = connect(), 0
        try:
            with conn.cursor() as cur:
                while not stop_load.is_set():
                    i = 1_000_000 * (k + 1) + n
                    cur.execute("INSERT INTO ledger VALUES (%s, %s)", (i, k))
                    conn.commit()
                    with lock:
                        acked.append(i)
                    n += 1
        except psycopg2.Error:
            pass  # the failover ended this connection
        finally:
            conn.close()

    def opener(k):
        """A transaction that never asks to commit: its row must not survive the failover."""
        conn = connect()
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO ledger VALUES (%s, %s)", (-(k + 1), 100 + k))
            with lock:
                open_ids.append(-(k + 1))
            select.select([conn], [], [], 120)  # idle in transaction, until the server speaks
            if killed_at[0]:
                to_error.append(time.monotonic() - killed_at[0])
            conn.poll()
        except psycopg2.Error:
            pass
        finally:
            conn.close()

    with Protected(lab, base, interval_ms=100, optimizations={"cp": True}) as p:
        setup = connect()
        setup.autocommit = True
        with setup.cursor() as cur:
            cur.execute("CREATE TABLE ledger (id bigint PRIMARY KEY, client int)")
        setup.close()
        threads = [threading.Thread(target=committer, args=(k,), daemon=True) for k in range(3)]
        threads += [threading.Thread(target=opener, args=(k,), daemon=True) for k in range(2)]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 120
            while (len(acked) < 20 or len(open_ids) < 2) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(open_ids) == 2 and len(acked) >= 20, (open_ids, len(acked))
            time.sleep(1.0)  # the open transactions' inserts are in a checkpoint by now
            killed_at[0] = time.monotonic()
            p.primary.kill(signal.SIGKILL)
            st = wait_status(p.standby_status, lambda s: s["state"] == "active", 60,
                             "failover", [p.standby])
        finally:
            stop_load.set()
            for t in threads:
                t.join(60)
        with lab.inside("client"):
            present = dbclient.query_one(
                dbclient.postgres, VM_IP,
                "SELECT array_agg(id) FROM ledger", timeout=60) or []
            lingering = dbclient.query_one(
                dbclient.postgres, VM_IP,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = 'remusdb' "
                "AND state LIKE 'idle in transaction%'", timeout=60)
    rec = st["failover"].get("cp_recovery")
    missing = sorted(set(acked) - set(present))
    print(f"failover {st['failover']}; {len(acked)} commits acknowledged, "
          f"{len(present)} rows after; open transactions' clients got an error after "
          f"{[round(x, 2) for x in to_error]} s")
    assert rec and "error" not in rec and rec["terminated"] >= 2, rec
    assert not missing, f"acknowledged commits lost: {missing[:10]}"
    assert not set(open_ids) & set(present), "a transaction that never asked to commit survived"
    assert lingering == 0
    # the idle-in-transaction clients hear of the abort at once, not after a TCP timeout
    assert len(to_error) == 2 and max(to_error) < 15, to_error
