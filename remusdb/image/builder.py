"""Build the database guest image once and cache it under a key derived from its recipe.

The image is a raw ext4 file made with `mkfs.ext4 -d` (no loop mounts), plus the kernel and a
small initrd copied out of it for direct kernel boot. A recipe change (packages, guest files,
dbpatches/) gives a new key, so stale images are never reused and CI reuses a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from remusdb import paths
from remusdb.errors import RemusError
from remusdb.image.credentials import Credentials
from remusdb.steps import Progress, run_logged

RECIPE_VERSION = 1
SUITE = "bookworm"
PACKAGES = (
    "linux-image-amd64", "initramfs-tools", "zstd", "systemd-sysv", "udev", "dbus", "iproute2",
    "iputils-ping", "procps", "postgresql-15", "postgresql-contrib", "mariadb-server",
    "qemu-guest-agent",
)
DPKG_EXCLUDES = (
    "/usr/share/man/*", "/usr/share/doc/*", "/usr/share/info/*", "/usr/share/locale/*",
    "/usr/share/lintian/*", "/usr/share/linda/*",
)
DPKG_KEEP = ("/usr/share/locale/locale.alias", "/usr/share/doc/*/copyright")
IMAGE_SIZE = "4G"
MIN_FREE_BYTES = 5 << 30  # rootfs (~1.2 GB) + allocated image (~0.9 GB) + headroom
FILES_DIR = Path(__file__).resolve().parent / "files"


@dataclass(frozen=True)
class GuestImage:
    """A built image: what the QEMU driver boots."""

    root: Path  # the raw ext4 file system image (the guest's /dev/vda)
    kernel: Path
    initrd: Path
    key: str

    def credentials(self) -> Credentials:
        """The application login of this image's databases (kept beside it)."""
        return Credentials.load(self.root.parent)

    @classmethod
    def load(cls, directory: Path) -> GuestImage:
        manifest = json.loads((directory / "manifest.json").read_text())
        return cls(
            root=directory / "root.raw",
            kernel=directory / "vmlinuz",
            initrd=directory / "initrd.img",
            key=manifest["key"],
        )


def _hash_tree(h: hashlib._Hash, top: Path) -> None:
    if not top.is_dir():
        return
    for p in sorted(top.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(top)).encode() + b"\0")
            h.update(p.read_bytes())


def dbpatch_dirs(dbpatches: Path) -> list[Path]:
    """Guest-side database components: subdirectories whose Makefile installs to DESTDIR."""
    if not dbpatches.is_dir():
        return []
    return sorted(d for d in dbpatches.iterdir() if (d / "Makefile").is_file())


def recipe_key(dbpatches: Path | None = None) -> str:
    dbpatches = dbpatches if dbpatches is not None else paths.project_root() / "dbpatches"
    h = hashlib.sha256()
    recipe = {
        "version": RECIPE_VERSION, "suite": SUITE, "packages": PACKAGES,
        "excludes": DPKG_EXCLUDES, "keep": DPKG_KEEP, "size": IMAGE_SIZE,
    }
    h.update(json.dumps(recipe, sort_keys=True).encode())
    _hash_tree(h, FILES_DIR)
    for d in dbpatch_dirs(dbpatches):
        _hash_tree(h, d)
    return h.hexdigest()[:16]


def image_dir(key: str | None = None) -> Path:
    return paths.cache_dir() / "images" / (key or recipe_key())


def cached_image() -> GuestImage | None:
    d = image_dir()
    return GuestImage.load(d) if (d / "manifest.json").is_file() else None


def _check_host() -> None:
    if os.geteuid() != 0:
        raise RemusError("image build needs root (mmdebstrap --mode=root, chroot)")
    for tool in ("mmdebstrap", "mkfs.ext4", "chroot"):
        if shutil.which(tool) is None:
            raise RemusError(f"image build needs '{tool}' on PATH (run 'make deps')")


def _check_space(where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(where).free
    if free < MIN_FREE_BYTES:
        raise RemusError(
            f"not enough disk space for the image build in {where}: "
            f"{free / 2**30:.1f} GiB free, need {MIN_FREE_BYTES / 2**30:.0f} GiB"
        )


def install_dbpatches(rootfs: Path, dbpatches: Path, log: Path, progress: Progress) -> None:
    """Compile guest-side components on the host (same Debian release as the guest) into the root.

    Each dbpatches/<name>/Makefile gets `make install DESTDIR=<root>` (PGXS honours DESTDIR);
    an optional image-hook.sh then runs with the root as its argument (config edits and such).
    """
    for src in dbpatch_dirs(dbpatches):
        progress.note(f"dbpatches/{src.name}")
        # Built in a copy: objects in the source tree would change the image's key.
        with tempfile.TemporaryDirectory(prefix="dbpatch-") as tmp:
            d = Path(tmp) / src.name
            shutil.copytree(src, d)
            run_logged(["make", "-C", str(d), "install", f"DESTDIR={rootfs}"], log,
                        f"dbpatches/{d.name} install", progress)
            hook = d / "image-hook.sh"
            if hook.is_file():
                run_logged(["sh", str(hook), str(rootfs)], log, f"dbpatches/{d.name} hook",
                           progress)


def _bootstrap(rootfs: Path, log: Path, progress: Progress) -> None:
    progress.step(f"bootstrap Debian {SUITE} with PostgreSQL 15 and MariaDB (mmdebstrap)")
    cmd = [
        "mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory",
        "--include=" + ",".join(PACKAGES),
        "--aptopt=Acquire::Retries \"3\"",
        *(f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES),
        *(f"--dpkgopt=path-include={p}" for p in DPKG_KEEP),
        f"--customize-hook={FILES_DIR / 'customize.sh'} \"$1\"",
        SUITE, str(rootfs),
    ]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run_logged(cmd, log, "bootstrap", progress, env=env,
               show=lambda ln: ln.startswith(("I: ", "customize:", "E: ")))


def _copy_kernel(rootfs: Path, work: Path) -> str:
    """The guest's newest kernel and its initrd, beside the image; returns its version."""
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise RemusError("image build failed: no kernel in the guest's /boot")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    initrd = rootfs / "boot" / f"initrd.img-{version}"
    if not initrd.is_file():
        raise RemusError(f"image build failed: no initrd for kernel {version}")
    shutil.copy(kernels[-1], work / "vmlinuz")
    shutil.copy(initrd, work / "initrd.img")
    return version


def build(rebuild: bool = False, dbpatches: Path | None = None) -> GuestImage:
    """Return the cached image for the current recipe, building it first if needed."""
    dbpatches = dbpatches if dbpatches is not None else paths.project_root() / "dbpatches"
    key = recipe_key(dbpatches)
    final = image_dir(key)
    if (final / "manifest.json").is_file() and not rebuild:
        return GuestImage.load(final)
    _check_host()
    _check_space(final.parent)
    work = final.parent / f".{key}.build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log = final.parent / f"{key}.build.log"
    log.write_text("")
    rootfs = work / "rootfs"
    progress = Progress(total=6, label="image")
    t0 = time.monotonic()
    try:
        _bootstrap(rootfs, log, progress)

        progress.step("install guest-side database components (dbpatches/)")
        install_dbpatches(rootfs, dbpatches, log, progress)

        progress.step("database logins (a password of this image's own)")
        creds = Credentials.generate()
        run_logged(["sh", str(FILES_DIR / "db-roles.sh"), str(rootfs)], log, "db-roles",
                   progress, env=dict(os.environ, REMUSDB_DB_PASSWORD=creds.password),
                   show=lambda ln: ln.startswith("db-roles:"))
        creds.write(work)

        progress.step("copy out kernel and initrd")
        version = _copy_kernel(rootfs, work)

        progress.step(f"make the {IMAGE_SIZE} ext4 root (mkfs.ext4 -d)")
        run_logged(["mkfs.ext4", "-q", "-F", "-L", "remusdb-root", "-d", str(rootfs),
                     str(work / "root.raw"), IMAGE_SIZE], log, "mkfs.ext4", progress)

        progress.step("finish")
        shutil.rmtree(rootfs)
        manifest = {
            "key": key, "kernel_version": version, "suite": SUITE, "packages": PACKAGES,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - t0, 1),
            "allocated_bytes": (work / "root.raw").stat().st_blocks * 512,
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
        progress.done()
    except OSError as e:
        if e.errno == 28:
            raise RemusError(f"image build failed: no space left on device ({e.filename})") from e
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return GuestImage.load(final)
