"""The failover drill (`remusdb drill failover`, `make demo`): a ledger workload against the
protected VM, a kill -9 of the primary at a chosen point, and what the clients saw."""
