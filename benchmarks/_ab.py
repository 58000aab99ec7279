"""Within-VM A/B of the checkpoint interval: pure parsing and arithmetic.

Unprotected TPC-B varies by more than a factor of two from one fresh VM to the next on this
machine, and drifts within one VM too, so a ratio of two VMs' runs says little. Switching one
protected VM's interval between two values every few seconds (`remusdb interval`) while pgbench
reports each second (`-P 1 --progress-timestamp`) compares the two in the same VM, the same
minute and the same database state. Each whole second counts for the interval that was in force
all through it, some settling time after the switch; seconds a switch falls into count for
neither.
"""

from __future__ import annotations

import re

import numpy as np

PROGRESS = re.compile(r"^progress: (\d+(?:\.\d+)?) s, (\d+(?:\.\d+)?) tps", re.M)
SETTLE_S = 0.5  # a switch checkpoints at once; the first half second after it counts for neither


def seconds(report: str) -> list[tuple[float, float]]:
    """(wall time the second ended, TPS in it) from pgbench's `--progress-timestamp` lines."""
    return [(float(m[1]), float(m[2])) for m in PROGRESS.finditer(report)]


def phases(per_second: list[tuple[float, float]], switches: list[tuple[float, int]],
           settle: float = SETTLE_S) -> dict[int, list[float]]:
    """TPS of each second by the interval in force from `settle` after a switch to its end.
    `switches`: (wall time, interval from then on), the first one the start."""
    times = np.array([t for t, _ in switches])
    out: dict[int, list[float]] = {}
    for end, tps in per_second:
        begin = end - 1.0
        k = int(np.searchsorted(times, begin, side="right")) - 1
        if k < 0 or begin - times[k] < settle:
            continue  # before the first switch, or still settling
        if k + 1 < len(times) and times[k + 1] < end:
            continue  # switched inside this second
        out.setdefault(switches[k][1], []).append(tps)
    return out


def summary(by_interval: dict[int, list[float]], tested: int, reference: int) -> dict:
    """Mean TPS of each interval, the seconds behind it, and tested/reference."""
    out: dict = {}
    for ms in (tested, reference):
        tps = np.array(by_interval.get(ms, []), float)
        out[f"{ms} ms"] = {"seconds": len(tps),
                           "tps_mean": round(float(tps.mean()), 1) if len(tps) else None,
                           "tps_median": round(float(np.median(tps)), 1) if len(tps) else None}
    a, b = out[f"{tested} ms"]["tps_mean"], out[f"{reference} ms"]["tps_mean"]
    out["ratio"] = round(a / b, 3) if a is not None and b else None
    return out
