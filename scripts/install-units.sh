#!/bin/sh
# `make install`: the systemd units of this checkout (deploy/systemd), with its remusdb command,
# into $DESTDIR/etc/systemd/system; /etc/remusdb for the VMs' configs and keys (0700).
# Idempotent. Reloads systemd when it runs (not in a container or a DESTDIR install).
set -eu
cd "$(dirname "$0")/.."
here=$(pwd)
units="${DESTDIR:-}/etc/systemd/system"
mkdir -p "$units"
install -d -m 0700 "${DESTDIR:-}/etc/remusdb"
for u in deploy/systemd/*.service; do
    sed -e "s|@REMUSDB@|$here/.venv/bin/remusdb|g" -e "s|@DOCS@|$here|g" "$u" \
        > "$units/$(basename "$u").tmp"
    mv "$units/$(basename "$u").tmp" "$units/$(basename "$u")"
    echo "install: $units/$(basename "$u")"
done
if [ -z "${DESTDIR:-}" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
echo "install: per VM, /etc/remusdb/<vm>.toml and /etc/remusdb/<vm>.env (REMUSDB_HOST=primary"
echo "  or standby), keys in link.keys; then on both hosts: systemctl enable --now"
echo "  remusdb-node@<vm>; the first start, on the host that should run the VM:"
echo "  remusdb start /etc/remusdb/<vm>.toml --host H && systemctl restart remusdb-node@<vm>"
