"""The Grafana dashboard: its panels ask for metrics the nodes really export, the committed JSON
is the generated one, and the picture's evaluator computes what Prometheus would."""

import json
import math
from pathlib import Path

import pytest

from remusdb.ops import dashboard
from remusdb.ops.metrics import NodeMetrics
from tests.unit.test_ops import primary_docs

ROOT = Path(__file__).resolve().parents[2]


def test_histogram_quantile_interpolates_like_prometheus():
    b = [(0.001, 0), (0.002, 10), (0.005, 20), (math.inf, 20)]
    assert dashboard.histogram_quantile(0.5, b) == pytest.approx(0.002)
    assert dashboard.histogram_quantile(0.75, b) == pytest.approx(0.0035)
    assert dashboard.histogram_quantile(0.99, [(0.01, 1), (math.inf, 10)]) == 0.01  # in +Inf
    assert dashboard.histogram_quantile(0.5, [(0.01, 0), (math.inf, 0)]) is None


def test_rate_counts_a_counter_reset_as_new_increase():
    s = [dashboard.parse(t, f'remusdb_epochs_total{{vm="a",host="primary"}} {v}\n')
         for t, v in ((0, 0), (5, 50), (10, 100), (15, 20))]
    r = dashboard.rate(s, "remusdb_epochs_total", window=15)[("a", "primary")]
    assert r[-1] == (15, pytest.approx((50 + 50 + 20) / 15))


def scrapes_of_a_node(pauses_ms: list[float]) -> list:
    m = NodeMetrics("pg1", "primary", lambda: primary_docs())
    out = [dashboard.parse(0.0, m.text().decode())]
    for i, ms in enumerate(pauses_ms):
        m.captured(ms, 100, 1 << 20)
        m.sent(100, 1 << 18)
        m.acked(12.0)
        if i % 10 == 9:
            out.append(dashboard.parse(float(len(out)), m.text().decode()))
    return out


def test_every_panel_draws_from_what_a_node_exports():
    scrapes = scrapes_of_a_node([3.0] * 50 + [8.0] * 50)
    for p in dashboard.PANELS:
        lines = dashboard.series(scrapes, p)
        assert lines and all(pts for pts in lines.values()), p.title
    p50 = dashboard.series(scrapes, dashboard.PANELS[1])["pg1 primary p50"]
    assert 0.005 <= p50[-1][1] <= 0.01  # the second half's pauses, 8 ms, in the 5-10 ms bucket
    for p in dashboard.PANELS:  # and Grafana's queries name the same metrics
        assert all(p.metric in e for e in dashboard.promql(p))


def test_the_committed_dashboard_is_the_generated_one():
    committed = json.loads((ROOT / "docs/grafana-dashboard.json").read_text())
    assert committed == json.loads(json.dumps(dashboard.grafana()))


def test_the_picture_is_drawn(tmp_path):
    png = dashboard.render(scrapes_of_a_node([4.0] * 60), tmp_path / "d.png", "test",
                           {"event": 2.0})
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
