"""Tests of :mod:`sim.waves`: waveform files on request, grouped by interface, zoomed to the run."""

import math
import shutil
import subprocess
import re

import pytest

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from sim import waves as W
from sim.streams import stream_sink, stream_source

Word = data.StructLayout({"lanes": data.ArrayLayout(signed(8), 2), "last": 1})


class _Pass(wiring.Component):
    """A registered stream pass-through negating lane 1, with a signed status port."""

    i: In(stream.Signature(Word))
    o: Out(stream.Signature(Word))
    seen: Out(signed(6))

    def elaborate(self, platform):
        m = Module()
        with m.If(self.o.ready | ~self.o.valid):
            m.d.sync += self.o.valid.eq(self.i.valid)
            m.d.sync += self.o.payload.lanes[0].eq(self.i.payload.lanes[0])
            m.d.sync += self.o.payload.lanes[1].eq(-self.i.payload.lanes[1])
            m.d.sync += self.o.payload.last.eq(self.i.payload.last)
        m.d.comb += self.i.ready.eq(self.o.ready | ~self.o.valid)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += self.seen.eq(self.seen + 1)
        return m


def _simulate(name, n=20):
    dut = _Pass()
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    words = [{"lanes": [k, -k], "last": k == n - 1} for k in range(n)]
    out = []
    sim.add_testbench(stream_source(dut.i, words, p_stall=0.3))
    sim.add_testbench(stream_sink(dut.o, out, count=n, p_stall=0.3))
    result = W.run_simulation(sim, name, traces=[dut])
    assert out == [{"lanes": [k, k], "last": int(k == n - 1)} for k in range(n)]
    return result


def test_no_files_without_variable(monkeypatch, tmp_path, waves):
    monkeypatch.delenv(W.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    assert _simulate(waves) is None
    assert list(tmp_path.iterdir()) == []


def test_waves_written_grouped_and_zoomed(monkeypatch, tmp_path, waves):
    out_dir = tmp_path / "w"
    monkeypatch.setenv(W.ENV_VAR, str(out_dir))
    vcd_path, gtkw_path = _simulate(waves)
    assert waves == "test_waves__test_waves_written_grouped_and_zoomed"
    assert vcd_path == out_dir / f"{waves}.vcd" and vcd_path.exists()
    assert gtkw_path == out_dir / f"{waves}.gtkw" and gtkw_path.exists()
    gtkw = gtkw_path.read_text().splitlines()

    # groups: one per stream port, valid/ready/payload (and decoded fields) together
    def group(name):
        start = gtkw.index(f"-{name}")
        end = gtkw.index(f"-{name}", start + 1)
        return [line for line in gtkw[start + 1:end] if not line.startswith("@")]
    for port in ("i", "o"):
        body = [line.rsplit(".", 1)[-1] if "\\" not in line else line[line.index("\\"):]
                for line in group(port)]
        assert body == [f"{port}__valid", f"{port}__ready", f"{port}__payload[16:0]",
                        f"\\{port}__payload.lanes[15:0]", f"\\{port}__payload.lanes[0][7:0]",
                        f"\\{port}__payload.lanes[1][7:0]", f"\\{port}__payload.last"]
    assert any(line.endswith(".seen[5:0]") for line in gtkw)

    # signed fields and ports as signed decimals (flag 0x420), the rest in hex (0x22)
    def flag_of(suffix):
        flag = None
        for line in gtkw:
            if line.startswith("@"):
                flag = line
            elif line.endswith(suffix):
                return flag
        raise AssertionError(suffix)
    assert flag_of("\\o__payload.lanes[1][7:0]") == "@420"
    assert flag_of(".seen[5:0]") == "@420"
    assert flag_of(".o__valid") == "@22"
    assert flag_of("\\o__payload.last") == "@22"

    # the view covers the whole run: the last VCD timestamp fits in the wave pane, not 4x less
    stamps = [int(s) for s in re.findall(r"^#(\d+)$", vcd_path.read_text(), flags=re.M)]
    end = stamps[-1]
    assert end >= 20 * 10_000_000  # at least 20 cycles of 10 ns, in fs
    zoom_lines = [line for line in gtkw if line.startswith("*")]
    assert len(zoom_lines) == 1
    zoom = float(zoom_lines[0][1:].split()[0])
    visible = W.GTKWAVE_SPAN_UNITS * 2.0 ** -zoom
    assert end <= visible <= 1.1 * end
    assert f"[size] {W.WINDOW_SIZE[0]} {W.WINDOW_SIZE[1]}" in gtkw
    assert "[timestart] 0" in gtkw
    # header lines stay first, before any trace
    assert gtkw[0].startswith("[dumpfile]")


def test_zoom_formula():
    assert math.isclose(W.GTKWAVE_SPAN_UNITS * 2.0 ** -W.gtkw_zoom(10**9), 1.02e9)


@pytest.mark.skipif(not (shutil.which("gtkwave") and shutil.which("xvfb-run")),
                    reason="needs GTKWave and Xvfb (apt-get install gtkwave xvfb)")
def test_gtkwave_opens_on_the_whole_run(monkeypatch, tmp_path):
    """Open the save file in a real GTKWave (headless) and ask it what time window it shows."""
    monkeypatch.setenv(W.ENV_VAR, str(tmp_path))
    _simulate("gtkwave_window", n=120)
    stamps = [int(x) for x in re.findall(r"^#(\d+)$", (tmp_path / "gtkwave_window.vcd").read_text(),
                                          flags=re.M)]
    script = tmp_path / "q.tcl"
    script.write_text("set e [gtkwave::getWindowEndTime]\nputs \"WINDOW_END $e\"\n"
                      "gtkwave::/File/Quit\n")
    r = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1600x900x24", "gtkwave", "-S",
                        str(script), str(tmp_path / "gtkwave_window.gtkw")],
                       capture_output=True, text=True, timeout=120)
    m = re.search(r"WINDOW_END (\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    shown = int(m.group(1))
    assert stamps[-1] <= shown <= 1.15 * stamps[-1]


def test_group_traces_of_plain_values_and_dicts():
    a = Signal(4, name="a")
    v = Signal(Word, name="v")
    spec = W.group_traces({"g": [a, v]})
    assert list(spec) == ["g"]
    assert spec["g"][0] is a
    assert spec["g"][1] is v.as_value()


def test_waves_written_when_a_testbench_fails(monkeypatch, tmp_path):
    monkeypatch.setenv(W.ENV_VAR, str(tmp_path))
    dut = _Pass()
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def failing(ctx):
        await ctx.tick().repeat(7)
        raise AssertionError("boom")

    sim.add_testbench(failing)
    try:
        W.run_simulation(sim, "failing", traces=[dut])
    except AssertionError as exc:
        assert str(exc) == "boom"
    else:
        raise AssertionError("the testbench failure was swallowed")
    gtkw = (tmp_path / "failing.gtkw").read_text()
    assert (tmp_path / "failing.vcd").exists()
    assert "-i" in gtkw.splitlines() and any(line.startswith("*") for line in gtkw.splitlines())
