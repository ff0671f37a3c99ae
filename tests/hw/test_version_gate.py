# amaranth: UnusedElaboratable=no
"""Tests of the weight-version gate (:mod:`fpdeep_hw.node.version_gate`).

The golden model is :class:`VersionGateModel`: the rule of ``docs/training-spec.md`` written with
absolute image counts (the RTL keeps bounded differences). An environment model of a layer (FP,
EB and PG of successive images with random durations and random idle cycles, and a weight update
of random duration) drives the gate; every cycle the RTL's outputs equal the model's, and the
recorded schedule obeys the rule: every image's FP/EB ran on the version the spec says.
"""

import random

import pytest
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from fpdeep_hw.node.version_gate import VersionGate
from sim.lint import verilator_lint
from sim.waves import run_simulation


class VersionGateModel:
    """Cycle model of :class:`VersionGate`: outputs from the counts seen before this cycle."""

    def __init__(self, batch, lag, eb=True):
        self.B, self.D, self.eb = batch, lag, eb
        self.fp_started = self.eb_started = 0
        self.fp_done = self.eb_done = self.pg_done = 0
        self.updates = 0            # finished
        self.busy = False
        self.flush = False

    def outputs(self):
        B, D, M = self.B, self.D, self.updates
        ready = ((self.fp_done >= (M + 1) * B + D or self.flush) and self.pg_done >= (M + 1) * B
                 and (not self.eb or self.eb_done >= (M + 1) * B))
        return {
            "fp_go": int(self.fp_started < (self.updates + 1) * B + D),
            "eb_go": int(self.eb_started < (self.updates + 1) * B),
            "update_start": int(not self.busy and ready),
        }

    def clock(self, strobes):
        out = self.outputs()
        self.flush = bool(strobes["flush"])
        self.fp_started += strobes["fp_start"]
        self.eb_started += strobes["eb_start"]
        self.fp_done += strobes["fp_done"]
        self.eb_done += strobes["eb_done"]
        self.pg_done += strobes["pg_done"]
        if out["update_start"]:
            self.busy = True
        elif strobes["update_done"]:
            self.busy = False
            self.updates += 1


def run_gate(batch, lag, images, seed, *, eb=True, max_len=6, p_idle=0.3, waves="gate"):
    """Simulate the gate inside a random layer environment; return the event log."""
    dut = VersionGate(batch=batch, lag=lag, eb=eb)
    model = VersionGateModel(batch, lag, eb)
    rng = random.Random(seed)
    log = {"fp_start": [], "fp_done": [], "eb_start": [], "eb_done": [], "pg_done": [],
           "update_start": [], "update_done": [], "flush": None}
    names = ["fp_start", "fp_done", "eb_start", "eb_done", "pg_done", "update_done"]

    async def env(ctx):
        fp_busy = []                # finish cycles of FP images in flight (in order)
        eb_busy, pg_busy = [], []
        upd_end = None
        fp_next = eb_next = 0
        cycle = 0
        limit = 40 * images * (max_len + 2) + 200
        tail = 2 * max_len + 4      # cycles run after the last image for the last update
        while tail:
            if len(log["pg_done"]) >= images and len(log["fp_done"]) >= images:
                tail -= 1
            assert cycle < limit, f"deadlock: {log}"
            got = {k: ctx.get(getattr(dut, k)) for k in ("fp_go", "eb_go", "update_start")}
            assert got == model.outputs(), f"cycle {cycle}: rtl {got} model {model.outputs()}"
            s = dict.fromkeys(names, 0)
            # the run ends when FP has done every image: flush the last update
            s["flush"] = int(len(log["fp_done"]) == images)
            if s["flush"] and log["flush"] is None:
                log["flush"] = cycle
            # FP: one image at a time may start, finishing after a random time (in order)
            if got["fp_go"] and fp_next < images and rng.random() > p_idle:
                s["fp_start"] = 1
                last = fp_busy[-1] if fp_busy else cycle
                fp_busy.append(max(last, cycle) + rng.randint(1, max_len))
                log["fp_start"].append(cycle)
                fp_next += 1
            if fp_busy and fp_busy[0] <= cycle:
                fp_busy.pop(0)
                s["fp_done"] = 1
                log["fp_done"].append(cycle)
            # EB of image i after FP of image i is done; PG finishes after EB starts
            if (got["eb_go"] and eb_next < len(log["fp_done"]) - s["fp_done"]
                    and rng.random() > p_idle):
                s["eb_start"] = 1
                log["eb_start"].append(cycle)
                last_e = eb_busy[-1] if eb_busy else cycle
                eb_busy.append(max(last_e, cycle) + rng.randint(1, max_len))
                last_p = pg_busy[-1] if pg_busy else cycle
                pg_busy.append(max(last_p, cycle) + rng.randint(1, max_len))
                eb_next += 1
            if eb_busy and eb_busy[0] <= cycle:
                eb_busy.pop(0)
                s["eb_done"] = 1
                log["eb_done"].append(cycle)
            if pg_busy and pg_busy[0] <= cycle:
                pg_busy.pop(0)
                s["pg_done"] = 1
                log["pg_done"].append(cycle)
            if got["update_start"]:
                assert upd_end is None
                log["update_start"].append(cycle)
                upd_end = cycle + rng.randint(1, max_len)
            elif upd_end is not None and upd_end <= cycle:
                s["update_done"] = 1
                log["update_done"].append(cycle)
                upd_end = None
            for k, v in s.items():
                ctx.set(getattr(dut, k), v)
            model.clock(s)
            await ctx.tick()
            cycle += 1
        log["updates_rtl"] = ctx.get(dut.updates)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(env)
    run_simulation(sim, waves, traces=[dut])
    return log


def check_rule(log, batch, lag, images, eb=True):
    """The schedule obeys the spec: versions seen by FP/EB, update ordering."""
    B, D = batch, lag
    done = log["update_done"]
    starts = log["update_start"]
    assert len(starts) >= len(done) >= len(starts) - 1
    assert log["updates_rtl"] == len(done)
    for M, t in enumerate(starts):
        if M:
            assert t > done[M - 1]
        if log["flush"] is None or t <= log["flush"]:
            assert log["fp_done"][(M + 1) * B + D - 1] < t
        assert log["pg_done"][(M + 1) * B - 1] < t
        if eb:
            assert log["eb_done"][(M + 1) * B - 1] < t
    # every image's FP started on version max(0, (i - D) // B) and EB on i // B: version v was
    # complete (update v-1 done) before, and update v had not started yet
    for kind, version in (("fp_start", lambda i: max(0, (i - D) // B)),
                          ("eb_start", lambda i: i // B)):
        for i, t in enumerate(log[kind]):
            v = version(i)
            if v:
                assert done[v - 1] < t, (kind, i, v)
            if v < len(starts):
                assert t < starts[v] or (kind == "eb_start" and t < starts[v]), (kind, i, v)
    # the last possible update of the run happened (no deadlock of the gate)
    assert len(starts) == len(done) == images // B


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"^VersionGate batch must be a positive integer, not 0$"):
        VersionGate(batch=0, lag=1)
    with pytest.raises(ValueError, match=r"^VersionGate lag must be a non-negative integer, "
                                         r"not -1$"):
        VersionGate(batch=2, lag=-1)
    with pytest.raises(TypeError, match=r"^VersionGate eb must be a bool, not 1$"):
        VersionGate(batch=2, lag=1, eb=1)
    with pytest.raises(ValueError, match=r"^VersionGate counter width must be an integer in "
                                         r"5\.\.64, not 4$"):
        VersionGate(batch=4, lag=2, count_width=4)


def test_latency_and_first_update(waves):
    """No idle time: FP runs B + D images, then waits; the update starts the cycle after the
    last needed completion is counted (LATENCY = 1)."""
    log = run_gate(2, 1, 8, 0, max_len=1, p_idle=0.0, waves=waves)
    check_rule(log, 2, 1, 8)
    assert VersionGate(batch=2, lag=1).latency == 1
    B, D = 2, 1
    last = max(log["fp_done"][B + D - 1], log["pg_done"][B - 1], log["eb_done"][B - 1])
    assert log["update_start"][0] == last + 1
    # FP of image B + D started only after the update was done (one cycle later)
    assert log["fp_start"][B + D] == log["update_done"][0] + 1


@pytest.mark.parametrize("batch,lag,eb", [(1, 0, True), (2, 3, True), (3, 1, False), (4, 2, True)])
def test_random_schedules(batch, lag, eb, waves):
    images = 3 * batch + lag + 2
    log = run_gate(batch, lag, images, 7 * batch + lag, eb=eb, waves=waves)
    check_rule(log, batch, lag, images, eb)


@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 4), lag=st.integers(0, 4), seed=st.integers(0, 2**16),
       p_idle=st.sampled_from([0.0, 0.3, 0.7]), max_len=st.integers(1, 8))
def test_rule_property(batch, lag, seed, p_idle, max_len):
    images = 2 * batch + lag + 3
    log = run_gate(batch, lag, images, seed, max_len=max_len, p_idle=p_idle, waves=None)
    check_rule(log, batch, lag, images)


def test_lint(tmp_path):
    verilator_lint(VersionGate(batch=128, lag=3), "version_gate", tmp_path)
