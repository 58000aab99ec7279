"""The `remusdb` command."""

from __future__ import annotations

import argparse
import sys

from remusdb import __version__
from remusdb import config as configmod
from remusdb.errors import RemusError


def _load_config(path: str | None) -> configmod.Config:
    return configmod.load(path) if path else configmod.Config()


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
    cfg = configmod.load(args.config)
    print(f"{args.config}: ok (vm {cfg.vm.name}, {cfg.vm.memory >> 20} MiB, "
          f"{cfg.vm.vcpus} vCPU, interval {cfg.checkpoint.interval_ms} ms)")
    return 0


def cmd_config_example(args) -> int:
    sys.stdout.write(configmod.EXAMPLE)
    return 0


def cmd_net_sweep(args) -> int:
    from remusdb import hostnet
    removed = hostnet.sweep_stale()
    print(f"removed {len(removed)} stale namespace(s)" + (": " + ", ".join(removed)
                                                           if removed else ""))
    return 0


def cmd_demo(args) -> int:
    from remusdb import demo
    return demo.run(_load_config(args.config))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="remusdb", description=__doc__)
    p.add_argument("--version", action="version", version=f"remusdb {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    img = sub.add_parser("image", help="the database guest image").add_subparsers(
        dest="image_command", required=True, metavar="ACTION")
    b = img.add_parser("build", help="build (or reuse) the cached guest image")
    b.add_argument("--rebuild", action="store_true", help="build even if cached")
    b.set_defaults(func=cmd_image_build)
    img.add_parser("path", help="print the cached image's path").set_defaults(func=cmd_image_path)

    cfg = sub.add_parser("config", help="configuration files").add_subparsers(
        dest="config_command", required=True, metavar="ACTION")
    c = cfg.add_parser("check", help="validate a config file")
    c.add_argument("config")
    c.set_defaults(func=cmd_config_check)
    cfg.add_parser("example", help="print an example config").set_defaults(
        func=cmd_config_example)

    net = sub.add_parser("net", help="host network helpers").add_subparsers(
        dest="net_command", required=True, metavar="ACTION")
    net.add_parser("sweep", help="remove namespaces left by dead remusdb processes").set_defaults(
        func=cmd_net_sweep)

    d = sub.add_parser("demo", help="bring up the VM stack and query both databases")
    d.add_argument("--config", help="config file (default: built-in defaults)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except RemusError as e:
        print(f"remusdb: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("remusdb: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
