import pytest

from tests import hostpg


@pytest.fixture(scope="module")
def host_pg():
    """A Target on a throw-away host PostgreSQL, one per test module."""
    if not hostpg.available():
        pytest.skip("needs root and Debian's postgresql-15 on the host")
    from benchmarks.target import postgres_target
    with hostpg.host_postgres() as args:
        yield postgres_target(*args)
