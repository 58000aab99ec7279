"""Hypervisor drivers: QEMU (command line, QMP monitor, guest agent, snapshots)."""
