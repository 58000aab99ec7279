"""The Grafana dashboard of the nodes' metrics, and a picture of it drawn from real scrapes.

One list of panels makes both: `grafana()` turns each into PromQL for Grafana
(`docs/grafana-dashboard.json`, written by `python -m remusdb.ops.dashboard`), and
`render()` evaluates the same three expression shapes (a gauge, a counter's rate, a
histogram's quantile: Prometheus's arithmetic, without its extrapolation to the window's
edges) over scrapes of `/metrics` taken during a
run and draws them, so the picture shows what the dashboard shows without a Grafana here.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

RATE_WINDOW_S = 15.0
SCALES = {"s": (1000.0, "ms"), "bytes": (1 / 2**20, "MiB"), "Bps": (1 / 2**20, "MiB/s"),
          "percentunit": (100.0, "%")}  # the picture's rate() and quantile window ([1m] in Grafana)


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # gauge | rate | quantile
    metric: str
    unit: str = "short"  # Grafana's unit names
    quantiles: tuple[float, ...] = ()


PANELS = (
    Panel("Runs the VM protected (1) / unprotected or standby (0)", "gauge",
          "remusdb_protected"),
    Panel("Checkpoint pause p50 / p99", "quantile", "remusdb_checkpoint_pause_seconds", "s",
          (0.5, 0.99)),
    Panel("Checkpoints per second", "rate", "remusdb_epochs_total"),
    Panel("Bytes to the standby per second", "rate", "remusdb_sent_bytes_total", "Bps"),
    Panel("Epoch size (QEMU stream) p50", "quantile", "remusdb_epoch_stream_bytes", "bytes",
          (0.5,)),
    Panel("Held output: ACK after resume p50 / p99", "quantile",
          "remusdb_ack_after_resume_seconds", "s", (0.5, 0.99)),
    Panel("Age of the newest acknowledged / committed checkpoint", "gauge",
          "remusdb_checkpoint_age_seconds", "s"),
    Panel("Guest frames held now", "gauge", "remusdb_output_held_frames"),
    Panel("Compression: bytes sent per raw byte", "gauge", "remusdb_compression_ratio",
          "percentunit"),
    Panel("Term (one more at every take-over)", "gauge", "remusdb_term"),
)


def promql(p: Panel) -> list[str]:
    sel = f'{p.metric}{{vm=~"$vm"}}'
    if p.kind == "gauge":
        return [sel]
    if p.kind == "rate":
        return [f"sum by (vm, host) (rate({sel}[1m]))"]
    return [f'histogram_quantile({q}, sum by (le, vm, host) '
            f'(rate({p.metric}_bucket{{vm=~"$vm"}}[1m])))' for q in p.quantiles]


def grafana() -> dict:
    """The dashboard, importable into Grafana (datasource chosen at import)."""
    panels = []
    for i, p in enumerate(PANELS):
        panels.append({
            "id": i + 1, "type": "timeseries", "title": p.title,
            "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"},
            "gridPos": {"h": 7, "w": 12, "x": 12 * (i % 2), "y": 7 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
            "targets": [{"refId": chr(65 + k), "expr": e,
                         "legendFormat": "{{vm}} {{host}}" + (f" p{int(p.quantiles[k] * 100)}"
                                                              if p.quantiles else "")}
                        for k, e in enumerate(promql(p))]})
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "title": "remusdb: protected database VMs", "uid": "remusdb-nodes",
        "schemaVersion": 38, "version": 1, "refresh": "10s", "editable": True,
        "time": {"from": "now-30m", "to": "now"}, "tags": ["remusdb"],
        "templating": {"list": [{
            "name": "vm", "type": "query", "label": "VM", "multi": True, "includeAll": True,
            "current": {"text": "All", "value": "$__all"}, "allValue": ".*",
            "datasource": {"type": "prometheus", "uid": "${DS_PROMETHEUS}"},
            "query": {"query": "label_values(remusdb_node_state, vm)", "refId": "vm"},
            "definition": "label_values(remusdb_node_state, vm)", "refresh": 2}]},
        "panels": panels}


# Scrapes, and the three expression shapes over them
Key = tuple[str, str]  # (vm, host)
Scrape = tuple[float, dict[tuple[str, tuple], float]]  # time, (sample name, labels) -> value


def parse(t: float, text: str) -> Scrape:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return t, out


def _key(labels: tuple) -> Key:
    d = dict(labels)
    return d.get("vm", ""), d.get("host", "")


def gauge(scrapes: list[Scrape], name: str) -> dict[Key, list[tuple[float, float]]]:
    out: dict[Key, list] = defaultdict(list)
    for t, samples in scrapes:
        for (n, labels), v in samples.items():
            if n == name:
                out[_key(labels)].append((t, v))
    return dict(out)


def _counter_at(scrapes: list[Scrape], name: str) -> dict[tuple, list[tuple[float, float]]]:
    out: dict[tuple, list] = defaultdict(list)
    for t, samples in scrapes:
        for (n, labels), v in samples.items():
            if n == name:
                out[labels].append((t, v))
    return out


def _increase(points: list[tuple[float, float]], t: float, window: float) -> float | None:
    """The counter's increase over (t - window, t], resets counted as Prometheus does."""
    times = [p[0] for p in points]
    lo, hi = bisect.bisect_left(times, t - window), bisect.bisect_right(times, t)
    seg = points[lo:hi]
    if len(seg) < 2:
        return None
    inc = 0.0
    for (_, a), (_, b) in zip(seg, seg[1:], strict=False):
        inc += b - a if b >= a else b  # a reset: the new count is all increase
    return inc


def rate(scrapes: list[Scrape], name: str, window: float = RATE_WINDOW_S
         ) -> dict[Key, list[tuple[float, float]]]:
    out: dict[Key, list] = defaultdict(list)
    for labels, points in _counter_at(scrapes, name).items():
        for t, _ in points:
            inc = _increase(points, t, window)
            if inc is not None:
                out[_key(labels)].append((t, inc / window))
    return dict(out)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus's estimate from cumulative (upper bound, count) buckets: linear within
    the bucket the rank falls in; the highest finite bound when it falls in +Inf."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    prev_le, prev_n = 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_n) / (n - prev_n) if n > prev_n
                                               else 0)
        prev_le, prev_n = le, n
    return prev_le


def quantile(scrapes: list[Scrape], name: str, q: float, window: float = RATE_WINDOW_S
             ) -> dict[Key, list[tuple[float, float]]]:
    per_bucket = _counter_at(scrapes, name + "_bucket")
    groups: dict[Key, dict[float, list]] = defaultdict(dict)
    for labels, points in per_bucket.items():
        le = float(dict(labels)["le"])
        groups[_key(tuple(x for x in labels if x[0] != "le"))][le] = points
    out: dict[Key, list] = defaultdict(list)
    for key, by_le in groups.items():
        times = [t for t, _ in next(iter(by_le.values()))]
        for t in times:
            incs = [(le, _increase(pts, t, window)) for le, pts in by_le.items()]
            if any(v is None for _, v in incs):
                continue
            v = histogram_quantile(q, [(le, float(n or 0)) for le, n in incs])
            if v is not None:
                out[key].append((t, v))
    return dict(out)


def series(scrapes: list[Scrape], p: Panel) -> dict[str, list[tuple[float, float]]]:
    """The panel's lines, named like its Grafana legend."""
    if p.kind == "gauge":
        got = {f"{vm} {host}": s for (vm, host), s in gauge(scrapes, p.metric).items()}
    elif p.kind == "rate":
        got = {f"{vm} {host}": s for (vm, host), s in rate(scrapes, p.metric).items()}
    else:
        got = {}
        for q in p.quantiles:
            for (vm, host), s in quantile(scrapes, p.metric, q).items():
                got[f"{vm} {host} p{int(q * 100)}"] = s
    return got


def _base(line: str) -> str:
    """"pg1 primary p99" -> "pg1 primary": the VM and host a line is of."""
    return re.sub(r" p\d+$", "", line)


def render(scrapes: list[Scrape], path: Path, title: str, marks: dict[str, float] | None = None
           ) -> Path:
    """The dashboard's panels drawn from `scrapes` (time in seconds since the first);
    `marks`: events to draw as vertical lines (label -> time)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t0 = scrapes[0][0] if scrapes else 0.0
    rows = (len(PANELS) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(14, 2.6 * rows), sharex=True)
    fig.patch.set_facecolor("#181b1f")
    lines = [series(scrapes, p) for p in PANELS]
    # one colour per VM and host in every panel; p99 dashed beside its p50
    bases = sorted({_base(n) for got in lines for n in got})
    palette = ["#73bf69", "#f2cc0c", "#5794f2", "#ff780a", "#b877d9", "#f2495c"]
    color = {b: palette[i % len(palette)] for i, b in enumerate(bases)}
    for ax, p, got in zip(axes.flat, PANELS, lines, strict=False):
        scale, ylabel = SCALES.get(p.unit, (1.0, ""))
        ax.set_facecolor("#111217")
        ax.set_title(p.title, color="#d8d9da", fontsize=9, loc="left")
        ax.tick_params(colors="#9fa1a4", labelsize=7)
        ax.grid(color="#2c3235", linewidth=0.5)
        for name, pts in sorted(got.items()):
            if pts:
                ax.plot([t - t0 for t, _ in pts], [v * scale for _, v in pts], label=name,
                        linewidth=1.2, color=color[_base(name)],
                        linestyle="--" if name.endswith(" p99") else "-")
        for at in (marks or {}).values():
            ax.axvline(at - t0, color="#f2495c", linewidth=0.8, linestyle=":")
        if ylabel:
            ax.set_ylabel(ylabel, color="#9fa1a4", fontsize=7)
        ax.legend(fontsize=6, loc="upper left", facecolor="#181b1f", labelcolor="#d8d9da",
                  framealpha=0.6)
    for ax in axes[-1]:
        ax.set_xlabel("seconds", color="#9fa1a4", fontsize=7)
    fig.suptitle(title + ("  —  " + ", ".join(f"{k} at {v - t0:.0f} s" for k, v in
                                               (marks or {}).items()) if marks else ""),
                 color="#d8d9da", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90, facecolor=fig.get_facecolor())
    plt.close(fig)
    return path


if __name__ == "__main__":
    json.dump(grafana(), sys.stdout, indent=1)
    sys.stdout.write("\n")
