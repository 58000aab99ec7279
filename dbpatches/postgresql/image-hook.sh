#!/bin/sh
# Load remusdb_cp in the guest's PostgreSQL and create its functions in the postgres database
# (where the standby's recovery runs them). $1 = the guest root.
# (No /dev/shm in the chroot: the single-user run keeps dynamic shared memory in files.)
set -eu
root="$1"
pgconf=/etc/postgresql/15/main
cat >> "$root$pgconf/postgresql.conf" <<'PG'
shared_preload_libraries = 'remusdb_cp'
remusdb_cp.enabled = on
remusdb_cp.dscp = 11                 # the relay's optimizations.cp_dscp
remusdb_cp.protect_read_only = off   # a commit that wrote nothing needs no protection
PG
chroot "$root" runuser -u postgres -- /usr/lib/postgresql/15/bin/postgres --single \
    -D /var/lib/postgresql/15/main -c config_file=$pgconf/postgresql.conf \
    -c dynamic_shared_memory_type=mmap postgres >/dev/null <<'SQL'
CREATE EXTENSION remusdb_cp;
SQL
