import os

import pytest

from remusdb.lab.layout import mount_tmpfs, unmount
from tests import hostpg


@pytest.fixture
def small_fs(tmp_path):
    """small_fs(size) -> a directory on a tmpfs of its own, to fill up; unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounts a tmpfs (root)")
    mounted = []

    def make(size: int):
        d = tmp_path / f"fs{len(mounted)}"
        mount_tmpfs(d, size)
        mounted.append(d)
        return d
    yield make
    for d in mounted:
        unmount(d)


@pytest.fixture(scope="module")
def host_pg():
    """A Target on a throw-away host PostgreSQL, one per test module."""
    if not hostpg.available():
        pytest.skip("needs root and Debian's postgresql-15 on the host")
    from benchmarks.target import postgres_target
    with hostpg.host_postgres() as args:
        yield postgres_target(*args)
