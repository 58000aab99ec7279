"""Build Debian's QEMU 7.2 with remusdb's COLO/TCG patches, once, cached like the image.

Under TCG, Debian's 7.2 deadlocks after the first COLO checkpoint and misses dirty pages (see
docs/hypervisor.md and the patches in qemu-patches/). Under KVM neither bug applies and the
system binary is used. The build is x86_64-softmmu only, from the Debian source of the installed
qemu-system-x86 version, configured with --prefix=/usr so Debian's firmware packages are found.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from remusdb import paths
from remusdb.errors import RemusError
from remusdb.steps import Progress, run_logged

PATCHES_DIR = Path(__file__).resolve().parent / "qemu-patches"
CONFIGURE_FLAGS = (
    "--prefix=/usr", "--firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu",
    "--target-list=x86_64-softmmu", "--disable-docs", "--disable-gtk",
    "--disable-sdl", "--disable-vnc", "--disable-opengl", "--disable-spice", "--disable-xen",
    "--enable-slirp", "--enable-replication", "--disable-werror",
)
BINARY = "qemu-system-x86_64"
# QEMU finds its firmware relative to its binary (../share/qemu, ../share/seabios,
# ../lib/ipxe/qemu): the cached build links those to Debian's firmware packages.
FIRMWARE_LINKS = {"share/qemu": "/usr/share/qemu", "share/seabios": "/usr/share/seabios",
                  "lib/ipxe/qemu": "/usr/lib/ipxe/qemu"}


def debian_qemu_version() -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f=${source:Version}", "qemu-system-x86"],
                       capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout:
        raise RemusError("qemu-system-x86 is not installed (run 'make deps')")
    return r.stdout.strip()


def build_key(version: str) -> str:
    h = hashlib.sha256(json.dumps({"version": version, "flags": CONFIGURE_FLAGS}).encode())
    for p in sorted(PATCHES_DIR.glob("*.patch")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def build_dir(version: str | None = None) -> Path:
    return paths.cache_dir() / "qemu" / build_key(version or debian_qemu_version())


def patched_binary() -> Path | None:
    b = build_dir() / "bin" / BINARY
    return b if b.is_file() else None


def install_tree(out: Path, binary: Path) -> None:
    (out / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(binary, out / "bin" / BINARY)
    for rel, target in FIRMWARE_LINKS.items():
        link = out / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(target)


def build(rebuild: bool = False) -> Path:
    """Return the patched binary, building it first if the cache has none for this recipe."""
    version = debian_qemu_version()
    final = build_dir(version)
    if (final / "bin" / BINARY).is_file() and not rebuild:
        return final / "bin" / BINARY
    for tool in ("apt-get", "dpkg-source", "ninja", "meson", "patch"):
        if shutil.which(tool) is None:
            raise RemusError(f"QEMU build needs '{tool}' (run 'make deps')")
    final.parent.mkdir(parents=True, exist_ok=True)
    work = final.parent / f".{final.name}.build-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    log = final.parent / f"{final.name}.build.log"
    log.write_text("")
    progress = Progress(total=4, label="qemu")
    t0 = time.monotonic()
    try:
        progress.step(f"fetch Debian source of qemu {version}")
        run_logged(["apt-get", "source", "-q", "--download-only", f"qemu={version}"], log,
                    "apt-get source", progress, cwd=work)
        dsc = next(work.glob("qemu_*.dsc"))
        run_logged(["dpkg-source", "-x", dsc.name, "src"], log, "dpkg-source", progress,
                    cwd=work)
        progress.step(f"apply {len(list(PATCHES_DIR.glob('*.patch')))} remusdb patches")
        for p in sorted(PATCHES_DIR.glob("*.patch")):
            progress.note(p.name)
            run_logged(["patch", "-p1", "-i", str(p)], log, f"patch {p.name}", progress,
                        cwd=work / "src")
        progress.step("configure (x86_64-softmmu only)")
        (work / "src" / "build").mkdir(exist_ok=True)
        run_logged(["../configure", *CONFIGURE_FLAGS], log, "configure", progress,
                    cwd=work / "src" / "build")
        progress.step(f"compile {BINARY} (about 5 minutes on 2 cores)")
        run_logged(["ninja", "-j", str(os.cpu_count() or 2), BINARY], log, "ninja",
                    progress, cwd=work / "src" / "build",
                    show=lambda ln: ln.startswith("[") and ln.split("]")[0].endswith("00"))
        out = work / "out"
        install_tree(out, work / "src" / "build" / BINARY)
        (out / "manifest.json").write_text(json.dumps({
            "debian_version": version, "patches": sorted(p.name for p in
                                                         PATCHES_DIR.glob("*.patch")),
            "configure": CONFIGURE_FLAGS, "build_seconds": round(time.monotonic() - t0, 1),
        }, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        out.rename(final)
        progress.done()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final / "bin" / BINARY
