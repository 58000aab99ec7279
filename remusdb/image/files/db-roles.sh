#!/bin/sh
# The guest databases' logins, after the database components are installed. $1 = the guest
# root; REMUSDB_DB_PASSWORD = the application role's password (generated per image, URL-safe).
# The application role owns its database and nothing else; the superusers stay local-only
# (peer / unix_socket authentication inside the guest).
set -eu
root="$1"
pw="${REMUSDB_DB_PASSWORD:?no password given}"
case "$pw" in *[!A-Za-z0-9_-]*) echo "db-roles: password has unsafe characters" >&2; exit 1;; esac
pgconf=/etc/postgresql/15/main

echo "db-roles: PostgreSQL"
# Network logins only for the application role and its database; postgres has no password.
echo 'host remusdb remusdb 0.0.0.0/0 scram-sha-256' >> "$root$pgconf/pg_hba.conf"
chroot "$root" runuser -u postgres -- /usr/lib/postgresql/15/bin/postgres --single \
    -D /var/lib/postgresql/15/main -c config_file=$pgconf/postgresql.conf \
    -c dynamic_shared_memory_type=mmap postgres >/dev/null <<SQL
CREATE ROLE remusdb LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '$pw';
CREATE DATABASE remusdb OWNER remusdb;
GRANT pg_checkpoint TO remusdb;
SQL

echo "db-roles: MariaDB"
chroot "$root" runuser -u mysql -- /usr/sbin/mariadbd --bootstrap --datadir=/var/lib/mysql \
    --log-error=/tmp/mariadb-bootstrap.log >/dev/null <<SQL || { cat "$root/tmp/mariadb-bootstrap.log"; exit 1; }
FLUSH PRIVILEGES;
CREATE DATABASE IF NOT EXISTS remusdb;
CREATE USER IF NOT EXISTS 'remusdb'@'%' IDENTIFIED BY '$pw';
GRANT ALL PRIVILEGES ON remusdb.* TO 'remusdb'@'%';
FLUSH PRIVILEGES;
SQL
rm -f "$root/tmp/mariadb-bootstrap.log"
