"""The primary's per-epoch metrics: the ACK latency after a resume (what CP's commit
acknowledgements wait for beyond the epoch's end)."""

from remusdb.checkpoint import status
from remusdb.checkpoint.status import EpochMetrics, PrimaryStatus


def test_ack_latency_counts_from_the_resume_of_the_acknowledged_epoch():
    m = EpochMetrics()
    m.captured(5.0, 10, 1000, epoch=1, resumed_at=100.000)
    m.captured(5.0, 10, 1000, epoch=2, resumed_at=100.100)
    m.acked(1, 100.020)  # 20 ms after epoch 1 resumed
    m.acked(2, 100.130)  # 30 ms after epoch 2 resumed
    doc = m.fill(PrimaryStatus())
    assert doc.ack_ms == {"p50": 25.0, "p99": 29.9, "max": 30.0}
    assert "ACK ms after resume" in "\n".join(doc.lines())


def test_a_cumulative_ack_forgets_the_epochs_it_covers():
    m = EpochMetrics()
    for e in range(1, 4):
        m.captured(5.0, 1, 1, epoch=e, resumed_at=float(e))
    m.acked(3, 3.010)  # covers 1 and 2: only epoch 3's latency is counted
    assert m.fill(PrimaryStatus()).ack_ms == {"p50": 10.0, "p99": 10.0, "max": 10.0}
    m.acked(2, 9.0)  # nothing left for 2: no sample, no error
    assert m.ack_ms.count == 1


def test_a_standby_far_behind_does_not_grow_the_table(monkeypatch):
    monkeypatch.setattr(status, "MAX_UNACKED", 8)
    m = EpochMetrics()
    for e in range(100):
        m.captured(5.0, 1, 1, epoch=e, resumed_at=float(e))
    assert len(m._resumed) == 8 and min(m._resumed) == 92


def test_an_ack_before_the_resume_counts_as_no_wait():
    m = EpochMetrics()
    m.acked(1, 50.0)  # the epoch was queued and acknowledged while the VM was still held
    m.captured(5.0, 1, 1, epoch=1, resumed_at=50.2)
    assert m.ack_ms.count == 1 and m.fill(PrimaryStatus()).ack_ms["max"] == 0.0
    assert not m._resumed
