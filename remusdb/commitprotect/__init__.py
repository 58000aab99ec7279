"""Output commit and commit protection: the net relay and its per-epoch output buffer."""
