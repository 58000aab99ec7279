"""Where remusdb keeps its cache and its runtime files."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """Images and VM snapshots live here, shared by CI runs and later sessions on a machine."""
    base = os.environ.get("REMUSDB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "remusdb"
    )
    return Path(base)


def role_dir(vm_name: str, role: str, base: str) -> Path:
    """A daemon's runtime directory: `<base>/<vm>/<role>` (base: vm.run_dir or --run-dir)."""
    return Path(base) / vm_name / role


def project_root() -> Path:
    """The source checkout (dbpatches/ lives beside the package)."""
    return Path(__file__).resolve().parent.parent
