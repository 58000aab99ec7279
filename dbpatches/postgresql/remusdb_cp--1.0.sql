\echo Use "CREATE EXTENSION remusdb_cp" to load this file. \quit

-- Each client session's protection state, as the backends left it (after a failover: as of the
-- checkpoint the standby resumed from).
CREATE FUNCTION remusdb_cp_sessions(OUT pid int, OUT protected bool, OUT committing bool)
RETURNS SETOF record AS 'MODULE_PATHNAME', 'remusdb_cp_sessions' LANGUAGE C STRICT;

-- Lemma 2, run by the standby right after failover: every transaction that is not committing is
-- aborted and its session closed, so its client gets an error now instead of a TCP timeout. A
-- session survives only if nothing it sent since the checkpoint can have reached its client:
-- its socket is protected and it is committing or between transactions.
CREATE FUNCTION remusdb_cp_recover(OUT pid int, OUT terminated bool)
RETURNS SETOF record AS $$
    SELECT s.pid, pg_catalog.pg_terminate_backend(s.pid)
    FROM @extschema@.remusdb_cp_sessions() s JOIN pg_catalog.pg_stat_activity a ON a.pid = s.pid
    WHERE s.pid OPERATOR(pg_catalog.<>) pg_catalog.pg_backend_pid()
      AND NOT s.committing
      AND (NOT s.protected OR a.xact_start IS NOT NULL)
$$ LANGUAGE sql SET search_path = pg_catalog, pg_temp;

-- Only the superuser (the standby's recovery, through the guest agent) sees or ends sessions.
REVOKE ALL ON FUNCTION @extschema@.remusdb_cp_sessions() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.remusdb_cp_recover() FROM PUBLIC;
