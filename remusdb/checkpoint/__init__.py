"""Epochs from a stock QEMU over COLO: stream capture, shipping, standby store, failover."""
