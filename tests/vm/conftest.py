"""Fixtures for tests against the real database guest (QEMU, TCG here)."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from remusdb.config import Config
from remusdb.image import builder
from remusdb.lab.net import Lab
from remusdb.vm import launch

if os.geteuid() != 0:
    pytest.skip("VM tests need root (namespaces, taps, image build)", allow_module_level=True)


@pytest.fixture(scope="session")
def image():
    return builder.build()


@pytest.fixture
def lab():
    with Lab() as lab:
        lab.add_tap("primary")
        yield lab


@pytest.fixture
def run_dir():
    d = Path(tempfile.mkdtemp(prefix="remusdb-test-", dir="/dev/shm"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def base():
    """Run directory of a protection test: daemons' files, stores, logs (in RAM)."""
    d = Path("/dev/shm") / f"remusdb-protect-{os.getpid()}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    yield d
    if os.environ.get("REMUSDB_KEEP_RUN"):  # debugging: keep the daemons' logs and files
        print(f"kept {d}")
        return
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cfg():
    return Config()


@pytest.fixture
def db_vm(cfg, image, lab, run_dir):
    """The database VM, restored from the saved snapshot (made on first use)."""
    guest = launch(cfg, image, run_dir, netns=lab.ns("primary"))
    yield guest
    guest.kill()
