"""Bar charts of a `remusdb bench` result, normalized to unprotected like the thesis's figures
5.7–5.16: one bar per mode, or per mode within each sweep value; a second panel shows the
checkpoint stream's bandwidth where it was measured."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.runner import SWEEPS, value_label  # noqa: E402


def chart(result: dict, path: Path) -> Path:
    pts = result["points"]
    kind = (result.get("sweep") or {}).get("kind")
    modes = list(dict.fromkeys(p["mode"] for p in pts))
    values = list(dict.fromkeys(p["sweep_value"] for p in pts if p["sweep_value"] is not None)) \
        or [None]
    with_bw = any(p.get("sent_mb_per_s") is not None for p in pts)
    fig, axes = plt.subplots(1, 2 if with_bw else 1, figsize=(11 if with_bw else 7, 4.2),
                             squeeze=False)
    width = 0.8 / max(1, len(modes))

    def find(mode, value):
        for p in pts:
            if p["mode"] == mode and (p["sweep_value"] == value or
                                      (mode == "unprotected" and p["sweep_value"] is None)):
                return p
        return None

    norm = any("normalized" in p for p in pts)
    unit = next((p["unit"] for p in pts if p.get("unit")), "")
    first = ("normalized", "score / unprotected") if norm else ("score", unit)
    for ax, key, ylabel in ((axes[0][0], *first),
                            *(((axes[0][1], "sent_mb_per_s", "checkpoint stream MB/s"),)
                              if with_bw else ())):
        for j, mode in enumerate(modes):
            for i, value in enumerate(values):
                p = find(mode, value)
                x = i + (j - (len(modes) - 1) / 2) * width
                if p is None:
                    continue
                y = p.get(key)
                if y is None:
                    text = "n/a" if p.get("available") is False else (
                        "failed" if p.get("error") else "")
                    if text and key == first[0]:
                        ax.text(x, 0.02, text, rotation=90, ha="center", va="bottom",
                                fontsize=7)
                    continue
                ax.bar(x, y, width, color=f"C{j}", label=mode if i == 0 else None)
                if key == first[0]:
                    ax.text(x, y, f"{y:.2f}" if norm else f"{y:.0f}", ha="center",
                            va="bottom", fontsize=7)
        ax.set_xticks(range(len(values)), [value_label(kind, v) for v in values])
        ax.set_ylabel(ylabel)
        if kind:
            ax.set_xlabel(SWEEPS[kind])
        if key == "normalized":
            ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{result['benchmark'].upper()} on {result['db']} ({unit}), "
                 f"scale {result['scale']}" + (", normalized to unprotected" if norm else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
