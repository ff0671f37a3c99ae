# amaranth: UnusedElaboratable=no
"""Board platforms (``boards/platforms``) and the serial link PHY (``fpdeep_hw/link/transceiver``).

Platform builds run with ``do_build=False``: they prove that a design, its pins and its
constraints come together (Verilog, XDC, Vivado script) without the vendor tools.
"""

import random
import re
import subprocess
import sys

import pytest
from amaranth.build import ResourceError
from amaranth.hdl import (ClockDomain, ClockSignal, Elaboratable, Instance, Module, ResetSignal,
                          Signal)
from amaranth.lib import io
from amaranth.sim import Simulator
from amaranth.vendor import XilinxPlatform

from boards.platforms import PLATFORMS, platform_for
from boards.platforms.alveo_u280 import AlveoU280Platform
from boards.platforms.kcu105 import KCU105ChainPlatform
from boards.platforms.vc709 import VC709Platform
from fpdeep_hw.link.transceiver import SerialLinkPHY
from fpdeep_map.board import load_board
from sim.lint import verilator_lint
from sim.streams import stream_sink, stream_source

BOARDS = ["vc709", "kcu105", "alveo-u280"]


# --- helpers -----------------------------------------------------------------------------------

def xdc_locations(xdc):
    """``{port name: package pin}`` from the ``set_property LOC`` lines of an XDC file."""
    return dict((port, pin) for pin, port in
                re.findall(r'^set_property LOC (\S+) \[get_ports "([^"]+)"\]$', xdc, re.M))


def xdc_property(xdc, prop, port):
    match = re.search(rf'^set_property {prop} "([^"]+)" \[get_ports "{re.escape(port)}"\]$',
                      xdc, re.M)
    return match and match.group(1)


class BlinkAndLink(Elaboratable):
    """A counter on the default clock blinking LED 0 (if any) and one PHY on a chain lane.

    The PHY's words are a counter in its own user-clock domain ``link``; the received words are
    dropped. Without LEDs (Alveo U280) the counter's top bit goes nowhere.
    """

    def __init__(self, lane, refclk, *, led=True):
        self.lane = lane
        self.refclk = refclk
        self.led = led

    def elaborate(self, platform):
        m = Module()
        counter = Signal(25)
        m.d.sync += counter.eq(counter + 1)
        if self.led:
            m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
            m.d.comb += led.o.eq(counter[-1])

        m.submodules.phy = phy = SerialLinkPHY(lane=self.lane, refclk=self.refclk, domain="link")
        m.domains.link = ClockDomain("link")
        m.d.comb += [
            ClockSignal("link").eq(phy.user_clk),
            ResetSignal("link").eq(phy.user_rst),
            phy.tx.valid.eq(phy.channel_up),
            phy.rx.ready.eq(1),
        ]
        with m.If(phy.tx.valid & phy.tx.ready):
            m.d.link += phy.tx.payload.eq(phy.tx.payload + 1)
        return m


class AllLanePins(Elaboratable):
    """Requests every lane of ``platform.chain_lanes`` and its reference clock; ties them to a
    probe instance, so the XDC shows where each pin went."""

    def elaborate(self, platform):
        m = Module()
        ports = {}
        refclks = {}
        for name, number, refclk in platform.chain_lanes:
            lane = platform.request(name, number, dir="-")
            ports[f"i_{name}{number}_rxp"] = lane.rx.p
            ports[f"o_{name}{number}_txp"] = lane.tx.p
            if refclk not in refclks:
                refclks[refclk] = platform.request(*refclk, dir="-")
                ports[f"i_{refclk[0]}{refclk[1]}_p"] = refclks[refclk].p
        m.submodules.probe = Instance("gt_pins_probe", **ports)
        return m


# --- platform_for --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BOARDS)
def test_platform_for_matches_board_file(name):
    platform_cls = platform_for(name)
    assert issubclass(platform_cls, XilinxPlatform)
    board = load_board(name)
    assert f"{platform_cls.device}-{platform_cls.package}-{platform_cls.speed}" == board.part
    platform = platform_cls()
    # The lanes the board file counts for the chain, where the platform knows their pins.
    lanes = platform.chain_lanes
    assert len(set((name, number) for name, number, _ in lanes)) == len(lanes)
    assert set(platform.gt_channel_sites) == {(name, number) for name, number, _ in lanes}
    if name == "vc709":
        assert len(lanes) == 4      # the FMC HPC lanes are unverified: added by the user
    else:
        assert len(lanes) == board.transceivers


@pytest.mark.parametrize("name", ["vc707", "tiny-test", "VC709", "", None])
def test_platform_for_unknown_board(name):
    message = (f"{name!r}: no Amaranth platform for this board; platforms exist for: "
               f"alveo-u280, kcu105, vc709")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        platform_for(name)
    assert sorted(PLATFORMS) == ["alveo-u280", "kcu105", "vc709"]


def test_boards_package_does_not_import_amaranth():
    code = ("import sys, boards, fpdeep_map.board; "
            "assert 'amaranth' not in sys.modules, 'amaranth imported'; "
            "assert 'boards.platforms' not in sys.modules, 'platforms imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- platform builds -----------------------------------------------------------------------------

BUILD_CASES = {
    # board: (lane, refclk, led, {port: pin} expected in the XDC)
    "vc709": (("sfp", 0), ("sfp_refclk", 0), True, {
        "clk200_0__p": "H19", "clk200_0__n": "G18", "led_0__io": "AM39",
        "sfp_0__tx__p": "AN2", "sfp_0__tx__n": "AN1", "sfp_0__rx__p": "AM8", "sfp_0__rx__n": "AM7",
        "sfp_refclk_0__p": "AH8", "sfp_refclk_0__n": "AH7"}),
    "kcu105": (("sfp", 1), ("sfp_refclk", 0), True, {
        "clk125_0__p": "G10", "clk125_0__n": "F10", "led_0__io": "AP8",
        "sfp_1__tx__p": "W4", "sfp_1__rx__p": "V2", "sfp_refclk_0__p": "P6"}),
    "alveo-u280": (("qsfp0", 0), ("qsfp0_refclk", 0), False, {
        "sysclk_0__p": "BJ43", "sysclk_0__n": "BJ44", "hbm_cattrip_0__io": "D32",
        "qsfp0_0__tx__p": "L48", "qsfp0_0__rx__p": "L53", "qsfp0_refclk_0__p": "T42"}),
}


@pytest.mark.parametrize("name", BOARDS)
def test_build_plan(name):
    lane, refclk, led, expected = BUILD_CASES[name]
    platform = platform_for(name)()
    plan = platform.build(BlinkAndLink(lane, refclk, led=led), name="top", do_build=False)
    assert {"top.v", "top.xdc", "top.tcl"} <= set(plan.files)

    xdc = plan.files["top.xdc"]
    locations = xdc_locations(xdc)
    for port, pin in expected.items():
        assert locations.get(port) == pin, port
    # Transceiver pins carry no I/O standard; the board clock and LED do.
    lane_port = f"{lane[0]}_{lane[1]}__tx__p"
    assert xdc_property(xdc, "IOSTANDARD", lane_port) is None
    clock_port = f"{platform.default_clk}_0__p"
    assert xdc_property(xdc, "IOSTANDARD", clock_port) is not None
    period = 1e9 / platform.lookup(platform.default_clk).clock.frequency
    assert re.search(rf'^create_clock -name {clock_port} -period {period:g}\b', xdc, re.M)
    if led:
        assert "led_1__io" not in locations     # only what the design requests is constrained
        assert xdc_property(xdc, "IOSTANDARD", "led_0__io") == "LVCMOS18"

    verilog = plan.files["top.v"]
    assert re.search(r"^\s*aurora_64b66b_0 core \(", verilog, re.M)
    for port in ("s_axi_tx_tdata", "m_axi_rx_tdata", "channel_up", "user_clk_out", "txp", "rxn",
                 "gt_refclk1_p", "init_clk", "reset_pb", "pma_init"):
        assert re.search(rf"^\s*\.{port}\(", verilog, re.M), port
    assert f"-part {platform._part}" in plan.files["top.tcl"]


def test_vc709_sfp_pins_match_reference():
    # REFERENCE: SFP+ TX/RX pins AN2/AM8, AP4/AN6, AM4/AL6, AL2/AJ6; refclk AH8/AH7.
    plan = VC709Platform().build(AllLanePins(), do_build=False)
    locations = xdc_locations(plan.files["top.xdc"])
    for number, (tx_p, rx_p) in enumerate([("AN2", "AM8"), ("AP4", "AN6"),
                                           ("AM4", "AL6"), ("AL2", "AJ6")]):
        assert locations[f"sfp_{number}__tx__p"] == tx_p
        assert locations[f"sfp_{number}__rx__p"] == rx_p
    assert locations["sfp_refclk_0__p"] == "AH8"
    assert len(locations) == 4 * 2 + 1


def test_kcu105_and_u280_chain_lane_pins():
    plan = KCU105ChainPlatform().build(AllLanePins(), do_build=False)
    locations = xdc_locations(plan.files["top.xdc"])
    assert [locations[f"fmc_hpc_dp_{n}__tx__p"] for n in range(8)] == \
        ["F6", "D6", "C4", "B6", "N4", "J4", "L4", "G4"]
    assert [locations[f"fmc_hpc_dp_{n}__rx__p"] for n in range(8)] == \
        ["E4", "D2", "B2", "A4", "M2", "H2", "K2", "F2"]
    assert locations["fmc_hpc_refclk_0__p"] == "K6"
    assert len(locations) == 10 * 2 + 2

    plan = AlveoU280Platform().build(AllLanePins(), do_build=False)
    locations = xdc_locations(plan.files["top.xdc"])
    assert [locations[f"qsfp1_{n}__rx__p"] for n in range(4)] == ["G53", "F51", "E53", "D51"]
    assert [locations[f"qsfp1_{n}__tx__p"] for n in range(4)] == ["G48", "E48", "C48", "A49"]
    assert locations["qsfp1_refclk_0__p"] == "P42"
    assert locations["hbm_cattrip_0__io"] == "D32"      # driven low by the platform


def test_vc709_fmc_lanes_only_when_supplied():
    platform = VC709Platform()
    with pytest.raises(ResourceError):
        platform.request("fmc_hpc_dp", 0, dir="-")

    platform = VC709Platform()
    # Pin names made up for the test: the real ones must come from UG887 (see docs).
    table = {n: (f"A{2 * n + 1}", f"A{2 * n + 2}", f"B{2 * n + 1}", f"B{2 * n + 2}")
             for n in range(8)}
    platform.add_fmc_hpc_lanes(table, refclk=("C8", "C7"))
    assert len(platform.chain_lanes) == 12
    assert platform.chain_lanes[4] == ("fmc_hpc_dp", 0, ("fmc_hpc_refclk", 0))
    assert len(VC709Platform().chain_lanes) == 4        # other instances are unchanged
    plan = platform.build(BlinkAndLink(("fmc_hpc_dp", 7), ("fmc_hpc_refclk", 0)),
                          do_build=False)
    locations = xdc_locations(plan.files["top.xdc"])
    assert locations["fmc_hpc_dp_7__tx__p"] == "A15"
    assert locations["fmc_hpc_dp_7__rx__n"] == "B16"
    assert locations["fmc_hpc_refclk_0__p"] == "C8"


@pytest.mark.parametrize("lanes, refclk, message", [
    ({}, None, "FMC HPC lanes must be a non-empty dict of lane number to (tx_p, tx_n, rx_p, "
               "rx_n) pins, not {}"),
    ({8: ("A1", "A2", "B1", "B2")}, None,
     "FMC HPC lane number must be an integer from 0 to 7, not 8"),
    ({0: ("A1", "A2", "B1")}, None,
     "FMC HPC lane 0 pins must be a tuple of 4 package pin names (tx_p, tx_n, rx_p, rx_n), "
     "not ('A1', 'A2', 'B1')"),
    ({0: ("A1", "A2", "B1", "b2")}, None,
     "FMC HPC lane 0 pins must be a tuple of 4 package pin names (tx_p, tx_n, rx_p, rx_n), "
     "not ('A1', 'A2', 'B1', 'b2')"),
    ({0: ("A1", "A2", "B1", "B2")}, ("C8",),
     "FMC HPC reference clock must be a (p, n) pair of package pin names, not ('C8',)"),
])
def test_vc709_fmc_lanes_validation(lanes, refclk, message):
    with pytest.raises((TypeError, ValueError), match=f"^{re.escape(message)}$"):
        VC709Platform().add_fmc_hpc_lanes(lanes, refclk=refclk)


def test_u280_design_may_drive_cattrip_itself():
    class DrivesCattrip(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            m.submodules.cattrip = cattrip = io.Buffer(
                "o", platform.request("hbm_cattrip", 0, dir="-"))
            hbm_stat = Signal()     # stands for the HBM IP's DRAM_x_STAT_CATTRIP outputs
            m.d.comb += cattrip.o.eq(hbm_stat)
            m.d.sync += hbm_stat.eq(~hbm_stat)
            return m

    plan = AlveoU280Platform().build(DrivesCattrip(), do_build=False)
    assert "hbm_cattrip_low" not in plan.files["top.v"]
    assert xdc_locations(plan.files["top.xdc"])["hbm_cattrip_0__io"] == "D32"

    plan = AlveoU280Platform().build(BlinkAndLink(("qsfp0", 1), ("qsfp0_refclk", 0), led=False),
                                     do_build=False)
    verilog = plan.files["top.v"]
    assert re.search(r"^module \\top\.hbm_cattrip_low\b", verilog, re.M)


def test_phy_needs_lane_and_refclk_on_a_platform():
    with pytest.raises(ValueError, match="^SerialLinkPHY needs a lane and a reference clock "
                                         "resource to be built for a platform$"):
        VC709Platform().build(BlinkAndLink(None, None), do_build=False)


# --- SerialLinkPHY simulation model ---------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"lane": "sfp0"}, "SerialLinkPHY lane must be None or a (resource name, number) pair, "
                       "not 'sfp0'"),
    ({"refclk": ("sfp_refclk", -1)}, "SerialLinkPHY reference clock must be None or a "
                                     "(resource name, number) pair, not ('sfp_refclk', -1)"),
    ({"core": "aurora-0"}, "SerialLinkPHY core name must be a Verilog identifier, "
                           "not 'aurora-0'"),
    ({"domain": ""}, "SerialLinkPHY domain must be a non-empty string, not ''"),
    ({"init_domain": None}, "SerialLinkPHY init domain must be a non-empty string, not None"),
    ({"model_latency": 0}, "SerialLinkPHY model latency must be a positive integer, not 0"),
    ({"model_depth": True}, "SerialLinkPHY model depth must be a positive integer, not True"),
    ({"model_startup": -1}, "SerialLinkPHY model startup must be a non-negative integer, "
                            "not -1"),
])
def test_phy_arguments(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        SerialLinkPHY(**kwargs)


def test_phy_parameters_are_read_only():
    phy = SerialLinkPHY(lane=("sfp", 2), refclk=("sfp_refclk", 0), model_latency=3)
    assert (phy.lane, phy.refclk, phy.core, phy.LATENCY) == \
        (("sfp", 2), ("sfp_refclk", 0), "aurora_64b66b_0", 3)
    with pytest.raises(AttributeError):
        phy.lane = ("sfp", 1)


@pytest.mark.parametrize("latency, depth, seed", [(1, 1, 0), (4, 16, 1), (7, 5, 2)])
def test_phy_loopback_with_stalls(latency, depth, seed):
    rng = random.Random(seed)
    dut = SerialLinkPHY(model_latency=latency, model_depth=depth, model_startup=5)
    words = [rng.getrandbits(64) for _ in range(300)]
    out = []
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(dut.tx, words, rng=random.Random(seed + 10), p_stall=0.3,
                                    max_cycles=20_000))
    sim.add_testbench(stream_sink(dut.rx, out, count=len(words), rng=random.Random(seed + 20),
                                  p_stall=0.3, max_cycles=20_000))
    sim.run()
    assert out == words


@pytest.mark.parametrize("latency", [1, 2, 4, 9])
def test_phy_latency_to_the_cycle(latency):
    dut = SerialLinkPHY(model_latency=latency, model_startup=0)
    seen = []

    async def testbench(ctx):
        ctx.set(dut.rx.ready, 0)
        ctx.set(dut.tx.payload, 0x0123_4567_89AB_CDEF)
        ctx.set(dut.tx.valid, 1)
        assert ctx.get(dut.tx.ready)
        await ctx.tick()                    # the word is transferred in cycle 0
        ctx.set(dut.tx.valid, 0)
        for cycle in range(1, latency + 3):
            if ctx.get(dut.rx.valid):
                seen.append((cycle, ctx.get(dut.rx.payload)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    assert seen[0] == (dut.LATENCY, 0x0123_4567_89AB_CDEF)
    assert [cycle for cycle, _ in seen] == list(range(latency, latency + 3))   # held: no ready


@pytest.mark.parametrize("startup", [0, 1, 8])
def test_phy_startup_and_backpressure(startup):
    depth = 6
    dut = SerialLinkPHY(model_latency=3, model_depth=depth, model_startup=startup)
    trace = []

    async def testbench(ctx):
        ctx.set(dut.rx.ready, 0)
        ctx.set(dut.tx.valid, 1)
        for cycle in range(startup + depth + 6):
            trace.append((ctx.get(dut.channel_up), ctx.get(dut.tx.ready),
                          ctx.get(dut.soft_err), ctx.get(dut.hard_err)))
            ctx.set(dut.tx.payload, cycle)
            await ctx.tick()
        # Drain: the buffered words come back in order, then TX is accepted again.
        ctx.set(dut.tx.valid, 0)
        ctx.set(dut.rx.ready, 1)
        got = []
        for _ in range(depth + 3):
            if ctx.get(dut.rx.valid):
                got.append(ctx.get(dut.rx.payload))
            await ctx.tick()
        trace.append(got)
        trace.append(ctx.get(dut.tx.ready))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    status, got, ready_after = trace[:-2], trace[-2], trace[-1]
    assert [up for up, _, _, _ in status] == [0] * startup + [1] * (len(status) - startup)
    assert [ready for _, ready, _, _ in status] == \
        [0] * startup + [1] * depth + [0] * (len(status) - startup - depth)
    assert all(soft == hard == 0 for _, _, soft, hard in status)
    assert got == list(range(startup, startup + depth))
    assert ready_after == 1


@pytest.mark.parametrize("latency, depth, startup", [(4, 16, 8), (1, 1, 0)])
def test_phy_model_lint_clean(tmp_path, latency, depth, startup):
    phy = SerialLinkPHY(model_latency=latency, model_depth=depth, model_startup=startup)
    verilator_lint(phy, "serial_link_phy", tmp_path)


def test_phy_model_in_another_domain():
    dut = SerialLinkPHY(domain="link", model_latency=2, model_startup=2)
    words = list(range(1, 40))
    out = []
    m = Module()
    m.domains.link = ClockDomain("link")
    m.submodules.phy = dut
    sim = Simulator(m)
    sim.add_clock(1e-8, domain="link")
    sim.add_testbench(_in_domain(stream_source(dut.tx, words, p_stall=0.2), "link"))
    sim.add_testbench(_in_domain(stream_sink(dut.rx, out, count=len(words), p_stall=0.2),
                                 "link"))
    sim.run()
    assert out == words


def _in_domain(testbench, domain):
    """Run a ``sim.streams`` testbench whose ``ctx.tick()`` means ``ctx.tick(domain)``."""
    class DomainContext:
        def __init__(self, ctx):
            self._ctx = ctx

        def tick(self, domain_name=domain):
            return self._ctx.tick(domain_name)

        def __getattr__(self, name):
            return getattr(self._ctx, name)

    async def wrapped(ctx):
        await testbench(DomainContext(ctx))

    return wrapped
