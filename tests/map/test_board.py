"""Boards: shipped descriptions, sources of every number, validation errors, round trips
(fpdeep_map/board.py, boards/*.yaml)."""

import pytest
import yaml

from fpdeep_map.board import NUMERIC_FIELDS, Board, board_names, load_board, parse_board
from fpdeep_map.errors import FpdeepError
from fpdeep_map.network import load_network


def test_board_names():
    assert board_names() == ["alveo-u280", "kcu105", "sim-node", "tiny-test", "vc709"]


@pytest.mark.parametrize("name, device, lut, ff, bram36, dsp, uram", [
    ("vc709", "XC7VX690T", 433_200, 866_400, 1_470, 3_600, 0),
    ("kcu105", "XCKU040", 242_400, 484_800, 600, 1_920, 0),
    ("alveo-u280", "XCU280", 1_303_680, 2_607_360, 2_016, 9_024, 960),
])
def test_device_resources(name, device, lut, ff, bram36, dsp, uram):
    b = load_board(name)
    assert (b.name, b.device) == (name, device)
    assert (b.lut, b.ff, b.bram36, b.dsp, b.uram) == (lut, ff, bram36, dsp, uram)
    assert b.source == f"boards/{name}.yaml"
    assert b.bram_bits == bram36 * 36 * 1024


def test_vc709():
    b = load_board("vc709")
    assert b.part == "xc7vx690t-ffg1761-2"
    assert b.clock_mhz == 200.0
    # 3600 DSP x 200 MHz: the paper's one-MAC-per-DSP-per-cycle peak (1.44 TOPS)
    assert 2 * b.peak_macs_per_second == pytest.approx(1.44e12)
    # the realistic default link is far below the paper's 150 Gb/s and above the SFP+-only 19.8
    assert 19.8 < b.link_gbps < 150
    assert b.link_lanes * 2 <= b.transceivers
    assert b.offchip_gbytes == 8.0
    assert "--link-gbps" in b.notes


@pytest.mark.parametrize("name", ["vc709", "kcu105", "alveo-u280", "tiny-test"])
def test_every_number_has_a_source(name):
    b = load_board(name)
    for f in NUMERIC_FIELDS:
        if getattr(b, f) is None:
            continue
        assert f in b.sources and len(b.sources[f]) > 10, f
    # link figure consistent with the lanes it assumes (64B/66B coding at least)
    assert b.link_gbps <= b.link_lanes * b.transceiver_gbps * 64 / 66


@pytest.mark.parametrize("name", ["vc709", "kcu105", "alveo-u280", "tiny-test"])
def test_round_trip(name, tmp_path):
    b = load_board(name)
    assert Board.from_dict(b.to_dict()) == b
    p = tmp_path / "copy.yaml"
    p.write_text(yaml.safe_dump(b.to_dict()))
    c = load_board(str(p))
    assert c == b and c.sources == b.sources and c.source == str(p)


def test_tiny_test_board_is_small():
    """The test board computes the small networks but has very little block RAM (whether that
    forces parameter balancing is checked against the mapper's storage model in the plan tests)."""
    b = load_board("tiny-test")
    assert b.device == "synthetic"
    assert b.bram36 * 10 < min(load_board(n).bram36 for n in ("vc709", "kcu105", "alveo-u280"))
    # enough DSP for FP, EB and PG 3x3 engines of every conv layer of tiny and digits
    for net in ("tiny", "digits"):
        convs = sum(l.kind == "conv" for l in load_network(net).layers)
        assert b.dsp >= 3 * 9 * convs
    assert b.offchip_gbytes > 0  # FC weights live off chip


@pytest.mark.parametrize("net", ["tiny", "digits"])
@pytest.mark.parametrize("nodes", [2, 3])
def test_tiny_test_board_forces_parameter_balancing(net, nodes):
    """What the test board is for: on 2 and 3 nodes the small networks map, but only by keeping
    some parameters in a neighbour's BPRAM.  (If the mapper's storage model changes, re-tune
    `bram36` in boards/tiny-test.yaml so that this holds again.)"""
    mapper = pytest.importorskip("fpdeep_map.mapper")
    plan = mapper.map_network(load_network(net), load_board("tiny-test"), nodes)
    lends = [l for n in plan.node_plans for l in n.bpram]
    assert lends, "no parameter balancing happened"
    assert all(0 <= l.lender < nodes and l.lender != l.borrower and l.weights > 0
               for l in lends)


def test_overrides():
    b = load_board("vc709")
    c = b.with_overrides(link_gbps=150, clock_mhz=250)
    assert (c.link_gbps, c.clock_mhz) == (150.0, 250.0)
    assert c.sources["link_gbps"] == "command line"
    assert (b.link_gbps, b.clock_mhz) == (59.4, 200.0)  # unchanged
    assert b.with_overrides() is b
    with pytest.raises(FpdeepError) as info:
        b.with_overrides(link_gbps=0)
    assert str(info.value) == "--link-gbps: link_gbps: 0: must be a positive number"
    with pytest.raises(FpdeepError, match="--clock-mhz: clock_mhz: -5"):
        b.with_overrides(clock_mhz=-5)


# ---- validation errors ---------------------------------------------------------------------------

GOOD = dict(name="b", device="D", part="p", lut=1000, ff=2000, bram36=10, dsp=20, uram=0,
            clock_mhz=100, transceivers=4, transceiver_gbps=10.3125, link_lanes=2,
            link_gbps=19.8, offchip_gbytes=1, offchip_gbps=10)


def text_with(**changes):
    d = dict(GOOD)
    for k, v in changes.items():
        if v is ...:
            del d[k]
        else:
            d[k] = v
    return yaml.safe_dump(d, sort_keys=False)


def test_good_board_parses():
    b = parse_board(text_with(), "b.yaml")
    assert b.lut == 1000 and b.clock_mhz == 100.0 and b.sources == {} and b.power_w is None


ERRORS = [
    ("yaml", "lut: [1, 2\ndsp: 3\n", "line 2", "dsp: 3", "malformed YAML"),
    ("duplicate-key", "lut: 1\ndsp: 2\nlut: 3\n", "line 3", "lut: 3", "duplicate key"),
    ("empty", "", "(document)", None, "empty"),
    ("list", "- vc709\n", "(document)", ["vc709"], "mapping"),
    ("unknown", text_with(luts=5), "luts", 5, "unknown field"),
    ("missing-dsp", text_with(dsp=...), "dsp", None, "missing"),
    ("missing-link", text_with(link_gbps=...), "link_gbps", None, "missing"),
    ("zero-lut", text_with(lut=0), "lut", 0, "positive"),
    ("negative-bram", text_with(bram36=-3), "bram36", -3, "positive"),
    ("float-dsp", text_with(dsp=20.5), "dsp", 20.5, "integer"),
    ("string-ff", text_with(ff="2000"), "ff", "2000", "integer"),
    ("negative-uram", text_with(uram=-1), "uram", -1, ">= 0"),
    ("zero-clock", text_with(clock_mhz=0), "clock_mhz", 0, "positive"),
    ("string-clock", text_with(clock_mhz="fast"), "clock_mhz", "fast", "number"),
    ("negative-link", text_with(link_gbps=-1.0), "link_gbps", -1.0, "positive"),
    ("negative-offchip", text_with(offchip_gbytes=-1), "offchip_gbytes", -1, ">= 0"),
    ("offchip-half", text_with(offchip_gbytes=0), "offchip_gbps", 10.0, "both"),
    ("lanes", text_with(link_lanes=3), "link_lanes", 3, "two neighbours"),
    ("link-too-fast", text_with(link_gbps=30.0), "link_gbps", 30.0, "line rate"),
    ("one-transceiver", text_with(transceivers=1), "transceivers", 1, ">= 2"),
    ("empty-device", text_with(device=""), "device", "", "non-empty"),
    ("sources-unknown", text_with(sources={"lutz": "x"}), "sources.lutz", "x", "unknown field"),
    ("sources-not-text", text_with(sources={"lut": 5}), "sources.lut", 5, "non-empty string"),
    ("sources-list", text_with(sources=["a"]), "sources", ["a"], "mapping"),
]


@pytest.mark.parametrize("text, field, value, problem", [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_validation_errors(text, field, value, problem):
    with pytest.raises(FpdeepError) as info:
        parse_board(text, "myboard.yaml")
    e = info.value
    msg = str(e)
    assert "\n" not in msg
    assert msg.startswith(f"myboard.yaml: {field}: {value!r}: ")
    assert (e.file, e.field, e.value) == ("myboard.yaml", field, value)
    assert problem in msg


def test_unknown_board_lists_the_boards():
    with pytest.raises(FpdeepError) as info:
        load_board("vc707")
    msg = str(info.value)
    assert msg.startswith("vc707: board: 'vc707': unknown board")
    for n in board_names():
        assert n in msg


def test_board_file_errors(tmp_path):
    p = tmp_path / "mine.yaml"
    with pytest.raises(FpdeepError, match="no such file"):
        load_board(str(p))
    p.write_text(text_with(dsp=0))
    with pytest.raises(FpdeepError) as info:
        load_board(str(p))
    assert str(info.value) == f"{p}: dsp: 0: must be a positive integer"
    p.write_text(text_with(name=...))
    assert load_board(str(p)).name == "mine"


def test_boards_package_has_no_amaranth():
    import subprocess
    import sys
    code = ("import sys, boards, fpdeep_map.board, fpdeep_map.network, fpdeep_map.check; "
            "fpdeep_map.board.load_board('vc709'); "
            "sys.exit(1 if any(m == 'amaranth' or m.startswith('amaranth.') "
            "for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
