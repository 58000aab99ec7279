import subprocess

import pytest

from remusdb import steps
from remusdb.image import builder
from remusdb.steps import Progress


def test_recipe_key_tracks_dbpatches(tmp_path):
    empty = tmp_path / "dbpatches"
    empty.mkdir()
    k0 = builder.recipe_key(empty)
    assert k0 == builder.recipe_key(empty)
    ext = empty / "pgext"
    ext.mkdir()
    (ext / "Makefile").write_text("install:\n\ttrue\n")
    k1 = builder.recipe_key(empty)
    assert k1 != k0
    (ext / "pgext.c").write_text("int x;\n")
    assert builder.recipe_key(empty) != k1


def test_dbpatches_install_into_destdir(tmp_path):
    """The mechanism later issues use: `make install DESTDIR=<guest root>` then a hook."""
    patches = tmp_path / "dbpatches"
    comp = patches / "demo"
    comp.mkdir(parents=True)
    (comp / "Makefile").write_text(
        "install:\n\tmkdir -p $(DESTDIR)/usr/lib/demo && echo built > $(DESTDIR)/usr/lib/demo/x\n")
    (comp / "image-hook.sh").write_text('echo "hooked" > "$1/etc-demo"\n')
    (patches / "not-a-component").mkdir()
    root = tmp_path / "root"
    root.mkdir()
    log = tmp_path / "log"
    builder.install_dbpatches(root, patches, log, Progress(1, label="image"))
    assert (root / "usr/lib/demo/x").read_text() == "built\n"
    assert (root / "etc-demo").read_text() == "hooked\n"


def test_failed_step_names_the_reason(tmp_path):
    patches = tmp_path / "dbpatches"
    comp = patches / "broken"
    comp.mkdir(parents=True)
    (comp / "Makefile").write_text("install:\n\t@echo 'E: Unable to locate package nope'; false\n")
    try:
        builder.install_dbpatches(tmp_path, patches, tmp_path / "log", Progress(1, label="image"))
    except builder.RemusError as e:
        msg = str(e)
    else:
        raise AssertionError("a failing component must fail the build")
    assert msg.startswith("image build failed at 'dbpatches/broken install': "
                          "E: Unable to locate package nope")


def test_diagnose_prefers_space_then_apt_errors():
    assert steps._diagnose(["x", "write: No space left on device", "E: y"]) == \
        "no space left on device"
    assert steps._diagnose(["I: a", "E: Unable to locate package foo", "last"]) == \
        "E: Unable to locate package foo"
    assert steps._diagnose(["only"]) == "only"


def test_space_check(tmp_path, monkeypatch):
    monkeypatch.setattr(builder, "MIN_FREE_BYTES", 1 << 60)
    try:
        builder._check_space(tmp_path)
    except builder.RemusError as e:
        assert "not enough disk space for the image build" in str(e)
    else:
        raise AssertionError("expected a disk-space error")


def test_guest_scripts_are_valid_shell():
    for name in ("customize.sh", "remusdb-net"):
        subprocess.run(["sh", "-n", str(builder.FILES_DIR / name)], check=True)
    subprocess.run(["bash", "-n", str(builder.FILES_DIR / "remusdb-init")], check=True)


def test_each_image_gets_its_own_database_password_kept_0600(tmp_path):
    import os
    import stat

    from remusdb.errors import RemusError
    from remusdb.image.credentials import Credentials

    a, b = Credentials.generate(), Credentials.generate()
    assert a.password != b.password and len(a.password) >= 24
    assert a.password.replace("-", "").replace("_", "").isalnum()  # safe in SQL literals
    path = a.write(tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Credentials.load(tmp_path) == a
    with pytest.raises(RemusError, match="credentials.json not found"):
        Credentials.load(tmp_path / "elsewhere")
