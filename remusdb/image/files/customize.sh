#!/bin/sh
# mmdebstrap --customize-hook: runs on the host with $1 = the guest root (proc/sys/dev mounted).
# Everything that needs the guest's own binaries runs through chroot.
set -eu
root="$1"
files="$(dirname "$0")"
in_root() { chroot "$root" "$@"; }

echo "customize: boot files"
install -m 0755 "$files/remusdb-init" "$root/sbin/remusdb-init"
install -m 0755 "$files/remusdb-net" "$root/usr/local/sbin/remusdb-net"
install -m 0644 "$files/remusdb-net.service" "$root/etc/systemd/system/remusdb-net.service"
ln -sf /etc/systemd/system/remusdb-net.service \
    "$root/etc/systemd/system/multi-user.target.wants/remusdb-net.service"
echo "remusdb-guest" > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 remusdb-guest\n' > "$root/etc/hosts"
printf '/dev/vda / ext4 defaults,noatime,errors=remount-ro 0 1\n' > "$root/etc/fstab"
# Serial console login is not needed; the guest agent is the way in.
in_root systemctl mask serial-getty@ttyS0.service getty@tty1.service \
    systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer \
    e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || true

echo "customize: initrd with only virtio and ext4"
printf 'virtio_pci\nvirtio_blk\nvirtio_net\next4\n' > "$root/etc/initramfs-tools/modules"
sed -i 's/^MODULES=.*/MODULES=list/' "$root/etc/initramfs-tools/initramfs.conf"
sed -i 's/^COMPRESS=.*/COMPRESS=zstd/' "$root/etc/initramfs-tools/initramfs.conf" || true
in_root update-initramfs -u -k all >/dev/null

echo "customize: PostgreSQL 15"
pgconf=/etc/postgresql/15/main
cat >> "$root$pgconf/postgresql.conf" <<'PG'
# remusdb
listen_addresses = '*'
max_connections = 100
shared_buffers = 128MB
PG
# Logins: db-roles.sh, once the database components are in (its password is per image).

echo "customize: MariaDB 10.11"
cat > "$root/etc/mysql/mariadb.conf.d/90-remusdb.cnf" <<'MY'
[mysqld]
bind-address = 0.0.0.0
skip-name-resolve
innodb_buffer_pool_size = 128M
MY

echo "customize: trim"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
