"""Operating remusdb: the node's REST API, its Prometheus metrics, health checks, `remusdb list`."""
