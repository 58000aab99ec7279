"""Long build steps: numbered progress lines, full output to a log, one clear line on failure."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from remusdb.errors import RemusError


class Progress:
    """Numbered steps with their durations, so a long build shows where it is."""

    def __init__(self, total: int, label: str = "build", out=sys.stderr):
        self.total, self.n, self.out, self.label = total, 0, out, label
        self.t0 = time.monotonic()
        self.step_t0 = self.t0

    def step(self, what: str) -> None:
        self.done()
        self.n += 1
        self.step_t0 = time.monotonic()
        print(f"[{self.label} {self.n}/{self.total}] {what} ...", file=self.out, flush=True)

    def done(self) -> None:
        if self.n:
            dt = time.monotonic() - self.step_t0
            print(f"[{self.label} {self.n}/{self.total}] done in {dt:.0f} s", file=self.out,
                  flush=True)

    def note(self, line: str) -> None:
        print(f"    {line}", file=self.out, flush=True)


def run_logged(cmd: list[str], log: Path, what: str, progress: Progress,
                show=lambda line: False, env=None, cwd=None) -> None:
    """Run a build step, keep its full output in the log, show selected lines as progress."""
    with open(log, "a") as logf:
        logf.write(f"\n$ {' '.join(cmd)}\n")
        logf.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", env=env, cwd=cwd)
        tail: list[str] = []
        assert proc.stdout is not None  # stdout=PIPE
        for line in proc.stdout:
            logf.write(line)
            line = line.rstrip()
            tail = (tail + [line])[-40:]
            if show(line):
                progress.note(line)
        rc = proc.wait()
    if rc != 0:
        raise RemusError(f"{progress.label} build failed at '{what}': {_diagnose(tail)} "
                         f"(full log: {log})")


def _diagnose(tail: list[str]) -> str:
    """Pick the line that says why: apt's E: lines, a no-space error, else the last line."""
    for line in tail:
        if "No space left on device" in line:
            return "no space left on device"
    for marks in (("E:", "ERROR"), ("make: ***", "mkfs.ext4:", "error:")):
        hits = [ln for ln in tail if ln.lstrip().startswith(marks) or any(m in ln for m in marks)]
        if hits:
            return hits[0].strip()
    return tail[-1].strip() if tail else "no output"
