"""TPC-C, TPC-H and TPC-W drivers, the runner behind `remusdb bench`, and the lower-level
benchmark scripts. The drivers need no HA code: they take a `Target` (a way to connect)."""
