"""The guest image: a Debian bookworm root with PostgreSQL 15 and MariaDB 10.11."""
