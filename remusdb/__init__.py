"""remusdb: transparent high availability for database VMs, RemusDB-style, on stock QEMU."""

__version__ = "0.1.0"
