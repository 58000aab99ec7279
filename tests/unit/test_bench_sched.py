"""benchmarks/_sched.py: vCPU states and CPU occupants from scheduler events, binned by the
time since a checkpoint's resume (synthetic `perf script` lines)."""

import numpy as np

from benchmarks import _sched


def switch(cpu, t, prev, prev_pid, state, nxt, next_pid):
    return (f"{prev:>16s} {prev_pid}/{prev_pid} [{cpu:03d}] {t:.6f}: sched:sched_switch: "
            f"prev_comm={prev} prev_pid={prev_pid} prev_prio=120 prev_state={state} ==> "
            f"next_comm={nxt} next_pid={next_pid} next_prio=120")


def wakeup(cpu, t, comm, pid):
    return (f"{'swapper/0':>16s} 0/0 [{cpu:03d}] {t:.6f}: sched:sched_wakeup: "
            f"comm={comm} pid={pid} prio=120 target_cpu={cpu:03d}")


# One CPU. A resume at t=1.000 (wall clock 101.000 with offset 100): the daemon (pid 50) runs
# the first 4 ms while the vCPU (pid 7), preempted, waits; the vCPU then runs 16 ms, sleeps
# 5 ms (the idle task runs), is woken and waits 5 ms more, then runs to the end (1.040).
LINES = [
    switch(0, 0.990, "swapper/0", 0, "R", "CPU 0/TCG", 7),
    switch(0, 1.000, "CPU 0/TCG", 7, "R+", "python3", 50),
    switch(0, 1.004, "python3", 50, "S", "CPU 0/TCG", 7),
    switch(0, 1.020, "CPU 0/TCG", 7, "S", "swapper/0", 0),
    wakeup(0, 1.025, "CPU 0/TCG", 7),
    switch(0, 1.030, "swapper/0", 0, "R", "CPU 0/TCG", 7),
    wakeup(0, 1.040, "kworker/0:1", 99),
]


def test_vcpu_states_and_occupants_by_time_after_resume():
    out = _sched.analyze(LINES, {50: "primary daemon"}, np.array([101.0]), offset=100.0)
    assert out["seconds"] == 0.05
    after = out["after_resume"]
    v, cpu = after["vcpu_s_per_s"], after["cpu_s_per_s"]
    # one resume: each slice's seconds over its own width
    assert v["wait"]["0-5 ms"] == 0.8  # 4 of 5 ms runnable behind the daemon
    assert v["run"]["0-5 ms"] == 0.2 and v["run"]["5-10 ms"] == 1.0
    # asleep until the wakeup at 25 ms, then runnable until it gets the CPU at 30 ms
    assert v["sleep"]["20-30 ms"] == 0.5 and v["wait"]["20-30 ms"] == 0.5
    assert v["run"]["20-30 ms"] == 0.0
    assert v["run"]["30-50 ms"] == 1.0  # over the 10 ms recorded in that slice: still running
    assert v["run"]["50-70 ms"] is None  # nothing recorded there
    assert cpu["primary daemon"]["0-5 ms"] == 0.8
    assert cpu["idle"]["20-30 ms"] == 1.0 and cpu["vCPUs"]["30-50 ms"] == 1.0
    assert out["vcpu_s_per_s"]["sleep"] == round(0.005 / 0.05, 3)


def test_short_epochs_do_not_read_as_idle_vcpus():
    # resumes every 25 ms (nooc:25); the vCPU runs all along
    lines = [switch(0, 0.0, "swapper/0", 0, "R", "CPU 0/TCG", 7),
             wakeup(0, 0.2, "kworker/0:1", 99)]
    out = _sched.analyze(lines, {}, np.arange(0.0, 0.2, 0.025) + 100.0, offset=100.0)
    run = out["after_resume"]["vcpu_s_per_s"]["run"]
    assert run["0-5 ms"] == run["10-20 ms"] == run["20-30 ms"] == 1.0
    assert run["30-50 ms"] is None and run["70-100 ms"] is None


def test_intervals_split_at_each_resume():
    resumes = np.array([0.0, 0.1])
    got = _sched.binned([(0.095, 0.107)], resumes)
    # 5 ms at 95-100 ms after the first resume, 7 ms at 0-5 and 5-10 after the second
    assert np.allclose(got, [0.005, 0.002, 0, 0, 0, 0, 0.005])


def test_nothing_recorded_says_nothing():
    assert _sched.analyze([], {}, None, 0.0) == {}
    assert "after_resume" not in _sched.analyze(LINES, {}, None, 100.0)


def test_show_says_when_nothing_was_recorded(capsys):
    _sched.show("nooc:100 tpcb", {"error": "perf script: no data"})
    assert "no scheduler events (perf script: no data)" in capsys.readouterr().out
    _sched.show("nooc:100 tpcb", _sched.analyze(LINES, {}, np.array([101.0]), 100.0))
    out = capsys.readouterr().out
    assert "vCPU wait" in out and "0-5 ms" in out


def test_ack_after_resume_joins_the_trace_and_its_acks(tmp_path):
    from benchmarks.checkpoint_cost import ack_after_resume
    from remusdb.checkpoint.participants import EpochTrace, acks_path
    trace = tmp_path / "trace.csv"
    EpochTrace(trace).on_stop("test")  # creates both files, as a protected session does
    acks_path(trace).write_text("10.020,1\n10.090,2\n10.210,3\n")
    rows = np.array([[10.0, 1], [10.1, 2], [10.2, 3]])
    # epoch 2 was acknowledged before its resume (0), epochs 1 and 3: 20 and 10 ms
    assert ack_after_resume(trace, rows, 0, 20) == 10.0
    assert ack_after_resume(trace, rows, 10.05, 20) == 5.0  # epochs 2 and 3 only
    assert ack_after_resume(trace, rows[:0], 0, 20) is None


def test_another_vms_vcpus_are_not_counted_as_ours():
    other = [switch(1, 0.990, "swapper/1", 0, "R", "CPU 0/TCG", 8),
             switch(1, 1.010, "CPU 0/TCG", 8, "S", "swapper/1", 0)]
    merged = sorted(LINES + other, key=lambda ln: float(ln.split("] ")[1].split(":")[0]))
    out = _sched.analyze(merged, {}, None, 100.0, vcpus={7})
    assert out["cpu_s_per_s"]["other"] > 0  # tid 8 is another VM's vCPU
    alone = _sched.analyze(LINES, {}, None, 100.0, vcpus={7})
    assert out["vcpu_s_per_s"] == alone["vcpu_s_per_s"]
