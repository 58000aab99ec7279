#!/bin/sh
# Host packages and the project venv. Idempotent: installs only what is missing.
set -eu
cd "$(dirname "$0")/.."

PKGS="qemu-system-x86 qemu-utils mmdebstrap e2fsprogs iproute2 util-linux zstd
      postgresql-client postgresql-15 mariadb-client postgresql-server-dev-15 libkrb5-dev make gcc
      dpkg-dev patch ninja-build meson pkg-config flex bison libglib2.0-dev libpixman-1-dev
      libfdt-dev libslirp-dev python3-venv fio nbdkit nbdkit-plugin-python
      etcd-server nftables iputils-arping iputils-ping linux-perf"
# The patched QEMU is built from Debian's source package: apt needs a deb-src entry.
src=/etc/apt/sources.list.d/remusdb-debian-src.sources
if ! grep -rqs '^Types: deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    echo "deps: adding Debian deb-src entries ($src)"
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$src"
    need_update=1
fi
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ] || [ -n "${need_update:-}" ]; then
    echo "deps: installing Debian packages:$missing"
    [ "$(id -u)" = 0 ] || { echo "deps: need root to install Debian packages" >&2; exit 1; }
    apt-get update -q >/dev/null
    [ -z "$missing" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "deps: creating .venv"
    "$PY" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "deps: installing Python packages into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e '.[dev,bench]' >.venv/install.log 2>&1 ||
        { tail -20 .venv/install.log >&2; echo "deps: pip install failed (.venv/install.log)" >&2; exit 1; }
    touch "$stamp"
fi
