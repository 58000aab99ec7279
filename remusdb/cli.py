"""The `remusdb` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from remusdb import __version__, heap
from remusdb import config as configmod
from remusdb.drill.faults import FAULTS
from remusdb.errors import RemusError


def _count(text: str) -> int:
    """argparse type: a whole number >= 0."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return n


def _interval_ms(text: str) -> int:
    """argparse type: a checkpoint interval within the config's bounds."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if not configmod.interval_ok(n):
        raise argparse.ArgumentTypeError(
            f"expected milliseconds in {configmod.INTERVAL_BOUNDS}, got {text!r}")
    return n


def cmd_image_build(args) -> int:
    from remusdb.image import builder
    img = builder.build(rebuild=args.rebuild)
    print(img.root)
    return 0


def cmd_image_path(args) -> int:
    from remusdb.image import builder
    img = builder.cached_image()
    if img is None:
        raise RemusError("no image built for the current recipe: run 'remusdb image build'")
    print(img.root)
    return 0


def cmd_config_check(args) -> int:
    """A config, or a directory of them: each valid, and no two VMs on one port."""
    from remusdb.ops import listing
    for path, cfg in listing.config_files([args.config]):
        print(f"{path}: ok (vm {cfg.vm.name}, {cfg.vm.memory >> 20} MiB, "
              f"{cfg.vm.vcpus} vCPU, interval {cfg.checkpoint.interval_ms} ms)")
    return 0


def cmd_config_example(args) -> int:
    sys.stdout.write(configmod.EXAMPLE)
    return 0


def cmd_keys_init(args) -> int:
    from remusdb.checkpoint import keys, link
    from remusdb.ops import api
    cfg = configmod.load(args.config)
    directory = Path(args.dir) if args.dir else link.key_dir(cfg)
    written = keys.init(directory, cfg.vm.name, force=args.force)
    if [p.name for p in written] == [api.TOKEN_NAME]:
        print(f"the keys in {directory} are kept; added the REST API's token {written[0]}: "
              "copy it to the other host too")
        return 0
    print(f"a new CA and keys for VM {cfg.vm.name} in {directory}:")
    for p in written:
        print(f"  {p.name}")
    print("copy ca.crt and api.token with primary.crt/.key to the primary host and "
          "standby.crt/.key to the standby host (same directory, link.keys); keep ca.key "
          "offline; api.token is what the REST API's acting requests need")
    return 0


def cmd_release(args) -> int:
    from remusdb import protection
    from remusdb.checkpoint.control import request_failover
    cfg = configmod.load(args.config)
    request_failover(protection.role_dir(cfg, "standby", args.run_dir), cmd="release")
    print("released: the committed checkpoint may be replaced by a new session, and a failover "
          "to it needs --force")
    return 0


def cmd_net_sweep(args) -> int:
    from remusdb.lab import net
    removed = net.sweep_stale()
    print(f"removed {len(removed)} stale namespace(s)" + (": " + ", ".join(removed)
                                                           if removed else ""))
    return 0


def cmd_qemu_build(args) -> int:
    from remusdb.hypervisor import qemubuild
    from remusdb.hypervisor.qemu import resolve_accel
    if args.if_needed and resolve_accel("auto") == "kvm":
        print("KVM available: Debian's QEMU is used, no patched build needed")
        return 0
    print(qemubuild.build(rebuild=args.rebuild))
    return 0


def cmd_protect(args) -> int:
    from remusdb import protection
    from remusdb.checkpoint.participants import SessionAids
    from remusdb.reprotect.node import NodeOptions
    from remusdb.reprotect.roles import Role
    cfg = configmod.load(args.config)
    if args.no_compression:
        cfg.optimizations.compression = "off"
    aids = SessionAids(verify_every=args.verify_every, verify_count=args.verify_count,
                       trace=Path(args.trace) if args.trace else None,
                       record_dir=Path(args.record) if args.record else None,
                       record_epochs=args.record_epochs,
                       output_commit=not args.unsafe_no_output_commit)
    options = NodeOptions(aids, net_trace=Path(args.net_trace) if args.net_trace else None)
    return protection.run_node(cfg, "primary", Role.PRIMARY,
                               protection.role_dir(cfg, "primary", args.run_dir), options)


def cmd_standby(args) -> int:
    return _start_as_standby(args, "standby")


def cmd_node(args) -> int:
    return _start_as_standby(args, args.host)


def _start_as_standby(args, host: str) -> int:
    """A node that starts as a standby, unless `remusdb start` asked this host's next node
    start to start the VM (`remusdb protect`'s judgement then): asked once, consumed."""
    from remusdb import protection
    from remusdb.checkpoint.participants import SessionAids
    from remusdb.reprotect.node import NodeOptions
    from remusdb.reprotect.roles import Role
    cfg = configmod.load(args.config)
    options = NodeOptions(SessionAids(verify_every=args.verify_every,
                                      verify_count=args.verify_count),
                          standby_trace=Path(args.trace) if args.trace else None)
    d = protection.role_dir(cfg, host, args.run_dir)
    start_as = Role.PRIMARY if protection.take_start_request(d) else Role.STANDBY
    return protection.run_node(cfg, host, start_as, d, options)


def cmd_start(args) -> int:
    """The first start of a VM under systemd: the next start of this host's node starts it."""
    from remusdb import protection
    cfg = configmod.load(args.config)
    path = protection.request_start(protection.role_dir(cfg, args.host, args.run_dir))
    print(f"start requested ({path}): the next start of this host's node for VM "
          f"{cfg.vm.name} starts the VM here unless the peer runs it or a checkpoint exists "
          f"(systemctl restart remusdb-node@{cfg.vm.name})")
    return 0


def cmd_remote(args) -> int:
    """An acting request to a host's node over its REST API, signed with the API token."""
    from urllib.parse import urlencode

    from remusdb.ops import api
    cfg = configmod.load(args.config)
    address, port = cfg.api_address(args.host)
    if not port:
        raise RemusError(f"host {args.host} has no REST API (its api_port is 0)")
    token = api.load_token(api.token_path(cfg))
    if token is None:
        raise RemusError(f"no API token at {api.token_path(cfg)} (remusdb keys init)")
    query = {k: v for k, v in (("force", "true" if args.force else None),
                               ("ms", args.ms)) if v is not None}
    path = f"/{args.action}" + (f"?{urlencode(query)}" if query else "")
    try:
        code, reply = api.post(address, port, path, token)
    except OSError as e:
        raise RemusError(f"no answer from {address}:{port}: {e}") from None
    if code != 200:
        raise RemusError(f"{args.action} on host {args.host}: {reply.get('error') or code}")
    print(json.dumps(reply))
    return 0


def _primary_node(cfg, run_dir: str | None) -> tuple[str, Path]:
    """The host whose node daemon runs the VM here, and its directory."""
    from remusdb import protection
    from remusdb.checkpoint.status import NodeStatus
    from remusdb.reprotect import control
    for host in ("primary", "standby"):
        d = protection.role_dir(cfg, host, run_dir)
        st = NodeStatus.read(d / NodeStatus.file_name())
        if st is not None and st.state.startswith("primary") and (d / control.NODE_SOCKET
                                                                   ).exists():
            return host, d
    raise RemusError(f"no node daemon here runs VM {cfg.vm.name} as primary")


def cmd_interval(args) -> int:
    """A new checkpoint interval for the running protection session, without a restart."""
    from remusdb.reprotect import control
    cfg = configmod.load(args.config)
    host, d = _primary_node(cfg, args.run_dir)
    reply = control.request(d, "interval", interval_ms=args.ms)
    print(f"interval: host {host} checkpoints every {args.ms} ms now (was "
          f"{reply.failover.get('previous_ms')} ms); the config's "
          f"{cfg.checkpoint.interval_ms} ms returns with the next protection session")
    return 0


def cmd_node_request(args) -> int:
    """reprotect / switchover: asked of the node that runs the VM."""
    from remusdb.checkpoint.status import NodeStatus
    from remusdb.reprotect import control
    cfg = configmod.load(args.config)
    host, d = _primary_node(cfg, args.run_dir)
    control.request(d, args.command)
    if args.command == "reprotect":
        print(f"reprotect: the node on host {host} tries its standby now")
        return 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = NodeStatus.read(d / NodeStatus.file_name())
        if st is not None and not st.state.startswith(("primary", "handing")):
            print(f"switchover: host {host} handed the VM over (term {st.term}); "
                  "it is the standby now")
            return 0
        time.sleep(0.2)
    raise RemusError(f"switchover: host {host} still runs the VM after 60 s")


def _host_documents(cfg, host: str, run_dir: str | None) -> tuple[dict, str]:
    """A host's status documents (role -> StatusDoc) from its node's REST API, else from its
    status files on this machine (a stopped node's last word); and where they came from."""
    from remusdb import protection
    from remusdb.checkpoint.status import NodeStatus, PrimaryStatus, StandbyStatus
    from remusdb.ops import listing
    kinds = {d.role: d for d in (NodeStatus, PrimaryStatus, StandbyStatus)}
    # --run-dir names a directory here: read it, as asked
    answer = listing.ask(cfg, host) if not run_dir else "--run-dir given"
    if isinstance(answer, dict):
        return ({r: kinds[r].from_json(d) for r, d in answer["documents"].items()
                 if r in kinds and isinstance(d, dict)},
                "api {}:{}".format(*cfg.api_address(host)))
    why = answer
    d = protection.role_dir(cfg, host, run_dir)
    found = {}
    for kind in kinds.values():
        st = kind.read(d / kind.file_name())
        if st is not None:
            found[kind.role] = st
    return found, f"status files in {d} ({why})"


def cmd_status(args) -> int:
    """Each host's node, asked over its REST API (its files here when it does not answer)."""
    cfg = configmod.load(args.config)
    found, sources = {}, {}
    for host in ("primary", "standby"):
        docs, sources[host] = _host_documents(cfg, host, args.run_dir)
        found.update({f"{host}/{role}": st for role, st in docs.items()})
    witness = _witness_view(cfg) if cfg.witness.enabled else None
    if args.json:
        out: dict = {role: st.to_json() for role, st in found.items()}
        if witness is not None:
            out["witness"] = witness
        print(json.dumps(out, indent=1))
        return 0 if found else 1
    if not found and witness is None:
        raise RemusError(f"no remusdb daemon status for VM {cfg.vm.name} ("
                         + "; ".join(f"{h}: {w}" for h, w in sources.items()) + ")")
    for host, source in sources.items():
        print(f"[host {host}: {source}]" if any(k.startswith(f"{host}/") for k in found)
              else f"[host {host}: nothing: {source}]")
        for key, st in found.items():
            if key.startswith(f"{host}/"):
                print(st.headline(time.time()))
                for line in st.lines():
                    print(line)
    if witness is not None:
        print(_witness_line(witness))
    return 0


def cmd_list(args) -> int:
    """Every VM of the given configs (files, or directories of *.toml): one row each."""
    from remusdb.ops import listing
    rows = listing.rows(listing.configs(args.configs))
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
    else:
        from remusdb.ops.health import list_table
        print(list_table(rows))
    # for scripts: 1 when a VM runs twice or nobody can say where it runs
    return 1 if any(r["state"] in ("TWO PRIMARIES", "no node answers") for r in rows) else 0


def _witness_view(cfg) -> dict:
    """What etcd says now about this VM: who holds the key, its lease, the current checkpoint."""
    from remusdb.witness.etcd import EtcdWitness
    from remusdb.witness.rules import WitnessError
    w = cfg.witness
    try:
        view = EtcdWitness(w.endpoints, cfg.vm.name, w.prefix, w.ttl_s).view()
    except WitnessError as e:
        return {"error": str(e)}
    return {"leader": view.leader.__dict__ if view.leader else None,
            "lease_left_s": view.lease_left,
            "protection": view.protection.__dict__ if view.protection else None}


def _witness_line(w: dict) -> str:
    if "error" in w:
        return f"witness: {w['error']}"
    leader, p = w["leader"], w["protection"]
    held = (f"key held by {leader['host']} (term {leader['term']}, epoch {leader['epoch']} "
            f"acknowledged), lease {w['lease_left_s']:.0f} s left" if leader
            else "key free (nobody runs the VM as far as etcd knows)")
    cur = ("no record" if p is None else f"current checkpoint: session {p['session'][:8]}"
           if p["session"] else f"no current checkpoint (the VM ran unprotected, term {p['term']})")
    return f"witness: {held}; {cur}"


def cmd_failover(args) -> int:
    from remusdb import protection
    from remusdb.checkpoint.control import request_failover
    cfg = configmod.load(args.config)
    reply = request_failover(protection.role_dir(cfg, "standby", args.run_dir), force=args.force)
    print(f"failed over to epoch {reply.failover.get('epoch')}: VM running "
          f"{reply.failover.get('running_s')} s after the decision")
    return 0


def cmd_drill(args) -> int:
    from remusdb.drill import command
    return command.failover(args.db, args.interval, args.opts, args.kill_at, args.runs,
                            args.json, fault=args.fault, witness=args.witness)


def cmd_drill_matrix(args) -> int:
    from remusdb.drill import command
    return command.matrix(args.db, args.interval, args.opts, args.faults, args.points,
                          args.runs_per_fault, args.out, args.json, witness=args.witness)


def cmd_drill_reprotect(args) -> int:
    from remusdb.drill import command
    return command.reprotect(args.db, args.interval, args.cycles, args.out, args.json)


def cmd_demo(args) -> int:
    from remusdb.lab import demo
    return demo.run(interval_ms=args.interval, witness=args.witness)


def _add_tools(sub) -> None:
    """image, config, net, qemu: setting a host up."""
    img = sub.add_parser("image", help="the database guest image").add_subparsers(
        dest="image_command", required=True, metavar="ACTION")
    b = img.add_parser("build", help="build (or reuse) the cached guest image")
    b.add_argument("--rebuild", action="store_true", help="build even if cached")
    b.set_defaults(func=cmd_image_build)
    img.add_parser("path", help="print the cached image's path").set_defaults(func=cmd_image_path)

    cfg = sub.add_parser("config", help="configuration files").add_subparsers(
        dest="config_command", required=True, metavar="ACTION")
    c = cfg.add_parser("check", help="validate a config file, or a directory of them (no "
                       "two VMs on one port)")
    c.add_argument("config")
    c.set_defaults(func=cmd_config_check)
    cfg.add_parser("example", help="print an example config").set_defaults(
        func=cmd_config_example)

    keys = sub.add_parser("keys", help="the checkpoint link's CA and host keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION")
    k = keys.add_parser("init", help="make the pair's CA and both hosts' keys")
    k.add_argument("config")
    k.add_argument("--dir", help="where to write them (default: link.keys of the config)")
    k.add_argument("--force", action="store_true", help="replace existing keys")
    k.set_defaults(func=cmd_keys_init)

    net = sub.add_parser("net", help="host network helpers").add_subparsers(
        dest="net_command", required=True, metavar="ACTION")
    net.add_parser("sweep", help="remove namespaces left by dead remusdb processes").set_defaults(
        func=cmd_net_sweep)

    q = sub.add_parser("qemu", help="the patched QEMU build used under TCG").add_subparsers(
        dest="qemu_command", required=True, metavar="ACTION")
    qb = q.add_parser("build", help="build (or reuse) the patched QEMU")
    qb.add_argument("--rebuild", action="store_true")
    qb.add_argument("--if-needed", action="store_true",
                    help="only where guests run under TCG (no vmx/svm)")
    qb.set_defaults(func=cmd_qemu_build)


def _daemon_args(sp) -> None:
    sp.add_argument("config")
    sp.add_argument("--run-dir", help="base directory for runtime files (default vm.run_dir)")


def _once_primary(sp) -> None:
    """A node started as a standby is a primary after a failover: its test aids."""
    sp.add_argument("--verify-every", type=_count, default=0, metavar="N",
                    help="test mode, once primary: compare RAM and disk every Nth epoch")
    sp.add_argument("--verify-count", type=_count, default=0, metavar="K",
                    help="stop verifying after K checks (0: never stop)")


def _add_daemons(sub) -> None:
    """protect, standby, status, failover: running protection."""
    pr = sub.add_parser("protect", help="start the VM and protect it (primary daemon)")
    _daemon_args(pr)
    pr.add_argument("--verify-every", type=_count, default=0, metavar="N",
                    help="test mode: compare every page with the standby at every Nth epoch")
    pr.add_argument("--verify-count", type=_count, default=0, metavar="K",
                    help="stop verifying after K checks (0: never stop)")
    pr.add_argument("--trace", metavar="CSV", help="append one line per checkpoint: time, "
                    "epoch, pause ms, dirty pages, zero pages, stream bytes")
    pr.add_argument("--no-compression", action="store_true",
                    help="send pages raw (overrides optimizations.compression)")
    pr.add_argument("--record", metavar="DIR", help="benchmarks: on each SIGUSR1, write the "
                    "dirty pages of the next epochs to DIR/recording-K.rdbc")
    pr.add_argument("--record-epochs", type=_count, default=100, metavar="N",
                    help="epochs per recording (default 100)")
    pr.add_argument("--net-trace", metavar="CSV", help="tests: append one line per frame the "
                    "guest sends: time, how it went (p passed, u unprotected, h held, r released),"
                    " epoch, xxh3 of the frame")
    pr.add_argument("--unsafe-no-output-commit", action="store_true",
                    help="benchmarks: checkpoint but hold no output (what the network costs)")
    pr.set_defaults(func=cmd_protect)
    sb = sub.add_parser("standby", help="receive checkpoints and fail over (standby daemon)")
    _daemon_args(sb)
    sb.add_argument("--trace", metavar="CSV", help="tests: append one line per committed epoch "
                    "(time, epoch), written before its acknowledgement is sent")
    _once_primary(sb)
    sb.set_defaults(func=cmd_standby)
    nd = sub.add_parser("node", help="this host's node daemon, started as a standby (it "
                        "rejoins the peer; roles then move by failover and switchover)")
    _daemon_args(nd)
    nd.add_argument("--host", choices=("primary", "standby"), required=True,
                    help="which config section is this host")
    _once_primary(nd)
    nd.add_argument("--trace", metavar="CSV", help="tests: one line per committed epoch")
    nd.set_defaults(func=cmd_node)
    for name, text in (("reprotect", "protect the VM again now (the node retries by itself)"),
                       ("switchover", "planned role swap: the standby runs the VM from the "
                                      "last checkpoint, this host becomes its standby")):
        rq = sub.add_parser(name, help=text)
        _daemon_args(rq)
        rq.set_defaults(func=cmd_node_request)
    iv = sub.add_parser("interval", help="checkpoint every MS milliseconds from now on, for "
                        "the running protection session (no restart)")
    _daemon_args(iv)
    iv.add_argument("ms", type=_interval_ms, help="the new checkpoint interval (ms)")
    iv.set_defaults(func=cmd_interval)
    sr = sub.add_parser("start", help="under systemd: the next start of this host's node "
                        "starts the VM (the first start of a VM)")
    _daemon_args(sr)
    sr.add_argument("--host", choices=("primary", "standby"), required=True,
                    help="which config section is this host")
    sr.set_defaults(func=cmd_start)
    rm = sub.add_parser("remote", help="failover, switchover, reprotect or interval on a "
                        "host's node over its REST API (signed with the API token)")
    rm.add_argument("config")
    rm.add_argument("--host", choices=("primary", "standby"), required=True,
                    help="whose node to ask (the config section naming it)")
    rm.add_argument("action", choices=("failover", "switchover", "reprotect", "interval"))
    rm.add_argument("--force", action="store_true", help="failover: as `failover --force`")
    rm.add_argument("--ms", type=_interval_ms, help="interval: the new interval")
    rm.set_defaults(func=cmd_remote)
    ls = sub.add_parser("list", help="one line per protected VM: where it runs, its "
                        "standby, state, term, lag (asks each host's REST API)")
    ls.add_argument("configs", nargs="+", metavar="CONFIG",
                    help="VM config files, or directories of them (*.toml)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    st = sub.add_parser("status", help="protection state of a VM")
    _daemon_args(st)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    fo = sub.add_parser("failover", help="fail over now (refused while the primary sends)")
    _daemon_args(fo)
    fo.add_argument("--force", action="store_true",
                    help="fail over although the primary only went silent (fence it first)")
    fo.set_defaults(func=cmd_failover)
    rl = sub.add_parser("release", help="on the standby: let a new session replace its "
                                        "committed checkpoint (the primary's VM counts)")
    _daemon_args(rl)
    rl.set_defaults(func=cmd_release)


def _add_drill(sub) -> None:
    """drill failover: kill -9 under load, then check."""
    dr = sub.add_parser("drill", help="failover drills: kill the primary under load, check")
    drsub = dr.add_subparsers(dest="drill", required=True, metavar="DRILL")
    df = drsub.add_parser("failover", help="ledger workload, kill -9 of the primary, failover, "
                          "then every acknowledged commit and the ledger's invariants checked")
    df.add_argument("--db", choices=("postgres", "mariadb"), default="postgres")
    df.add_argument("--interval", type=_count, default=100, metavar="MS",
                    help="checkpoint interval (default 100)")
    df.add_argument("--opts", default="asc,rt",
                    help="optimizations: a comma list of asc, rt, cp, or none (default asc,rt:"
                         " the config's defaults)")
    df.add_argument("--kill-at", choices=("random", "mid-epoch", "mid-transfer"),
                    default="random")
    df.add_argument("--runs", type=_count, default=1, metavar="N")
    df.add_argument("--fault", default="daemon-kill", metavar="FAULT",
                    help="how a host fails: " + ", ".join(FAULTS)
                    + " (default daemon-kill; the partitions need --witness)")
    df.add_argument("--witness", action="store_true",
                    help="etcd as the witness, on a lab host of its own")
    df.add_argument("--json", action="store_true", help="print the reports as JSON")
    df.set_defaults(func=cmd_drill)
    dm = drsub.add_parser("matrix", help="every fault at every kill point, N runs each: a "
                          "table of what was lost, second copies and downtime, and a JSON file")
    dm.add_argument("--db", choices=("postgres", "mariadb"), default="postgres")
    dm.add_argument("--interval", type=_count, default=100, metavar="MS")
    dm.add_argument("--opts", default="asc,rt")
    dm.add_argument("--faults", default="all",
                    help="a comma list, partitions, or all (default)")
    dm.add_argument("--witness", action="store_true",
                    help="etcd as the witness (all: the partitions too)")
    dm.add_argument("--points", default="random,mid-epoch,mid-transfer",
                    help="kill points, a comma list (default all three)")
    dm.add_argument("--runs-per-fault", type=_count, default=1, metavar="N",
                    help="runs per fault and kill point (default 1)")
    dm.add_argument("--out", default=".", metavar="DIR", help="where the JSON goes")
    dm.add_argument("--json", action="store_true")
    dm.set_defaults(func=cmd_drill_matrix)
    dr = drsub.add_parser("reprotect", help="kill -9 the primary host, fail over, restart the "
                          "host's node (it rejoins, resynced), verify; N cycles, ledger running")
    dr.add_argument("--db", choices=("postgres", "mariadb"), default="postgres")
    dr.add_argument("--interval", type=_count, default=100, metavar="MS")
    dr.add_argument("--cycles", type=_count, default=3, metavar="N")
    dr.add_argument("--out", default=".", metavar="DIR",
                    help="where the JSON and the throughput PNG go (default: here)")
    dr.add_argument("--json", action="store_true")
    dr.set_defaults(func=cmd_drill_reprotect)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="remusdb", description=__doc__)
    p.add_argument("--version", action="version", version=f"remusdb {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log detail")
    p.add_argument("-q", "--quiet", action="count", default=0, help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_tools(sub)
    _add_daemons(sub)
    _add_drill(sub)
    from benchmarks import command as benchcmd  # the drivers load only when `bench` runs
    benchcmd.add_parser(sub)
    d = sub.add_parser("demo", help="protect a DB VM, kill its host, fail over (3 namespaces)")
    d.add_argument("--interval", type=_count, default=100, help="checkpoint interval in ms")
    d.add_argument("--witness", action="store_true",
                   help="etcd as the witness (a fourth lab host): the failover takes its key")
    d.set_defaults(func=cmd_demo)
    return p


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (a test may have swapped it and
    closed the old one while a daemon thread still logs)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbosity: int) -> None:
    """One format for every module's logger: time, module, message, on stderr."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    logging.basicConfig(level=level, handlers=[_Stderr()], force=True,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose - args.quiet)
    heap.keep_large_buffers()  # before any epoch's buffers: they stay mapped (remusdb/heap.py)
    try:
        return args.func(args)
    except RemusError as e:
        print(f"remusdb: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"remusdb: error: {e.strerror or e}"
              + (f": {e.filename}" if getattr(e, "filename", None) else ""), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("remusdb: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
