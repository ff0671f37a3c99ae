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


# --- lanes sharing a reference clock (one owner core, the others fed from it) -----------------

class TwoLinks(Elaboratable):
    """A PHY per side on the lanes :func:`chain_lanes_for` gives ``sides``: an owner, then
    (where the lanes share its reference clock) a sharer fed from it; a counter on each link."""

    def __init__(self, sides=("prev", "next")):
        self.sides = sides
        self.phys = {}

    def elaborate(self, platform):
        from fpdeep_hw.board_top import chain_lanes_for
        m = Module()
        for side, (lane, refclk, owner) in chain_lanes_for(platform, self.sides).items():
            phy = SerialLinkPHY(lane=lane, refclk=refclk, domain=f"link_{side}",
                                owner=None if owner is None else self.phys[owner])
            self.phys[side] = m.submodules[f"phy_{side}"] = phy
            m.domains += ClockDomain(f"link_{side}")
            m.d.comb += [ClockSignal(f"link_{side}").eq(phy.user_clk),
                         ResetSignal(f"link_{side}").eq(phy.user_rst),
                         phy.tx.valid.eq(phy.channel_up), phy.rx.ready.eq(1)]
            with m.If(phy.tx.valid & phy.tx.ready):
                m.d[f"link_{side}"] += phy.tx.payload.eq(phy.tx.payload + 1)
        return m


_MODULE = re.compile(r"^module (\S+)\s*\(.*?\);\n(.*?)^endmodule", re.S | re.M)
_INSTANCE = re.compile(r"^  (\\?\S+) +(\\?\S+) +\((.*?)\n  \);", re.S | re.M)
_ALIAS = re.compile(r"^  assign (\\?\S+) = (\\?\S+) ;?", re.M)


def verilog_modules(text):
    """``{module: (instances, aliases)}`` of a Yosys-written Verilog file: instances as
    ``[(type, name, {port: net})]`` (nets as written, without a trailing space), aliases as
    ``{net: net}`` for ``assign a = b;`` between plain nets."""
    mods = {}
    for name, body in _MODULE.findall(text):
        insts = []
        for typ, inst, conns in _INSTANCE.findall(body):
            if typ in ("input", "output", "inout", "wire", "reg", "assign", "always"):
                continue
            ports = {p: n.strip() for p, n in re.findall(r"\.(\w+)\(([^()]*?)\)", conns)}
            insts.append((typ.strip(), inst.strip(), ports))
        aliases = {}
        for a, b in _ALIAS.findall(body):
            a, b = a.strip(), b.strip().rstrip(";").strip()
            if re.fullmatch(r"\\?[\w$.]+", b):
                aliases[a] = b
        mods[name.strip()] = (insts, aliases)
    return mods


def top_net(mods, module, net, top="top"):
    """The net of ``top`` that ``net`` of ``module`` is (following ports up the hierarchy and
    plain ``assign`` aliases), or ``(module, net)`` if it does not reach the top."""
    while True:
        _, aliases = mods[module]
        seen = set()
        while net in aliases and net not in seen:
            seen.add(net)
            net = aliases[net]
        if module == top:
            return net
        parents = [(parent, ports) for parent, (insts, _) in mods.items()
                   for typ, _, ports in insts if typ.lstrip("\\") == module.lstrip("\\")]
        assert len(parents) == 1, (module, parents)
        parent, ports = parents[0]
        if net not in ports:
            return (module, net)
        module, net = parent, ports[net]


def aurora_cores(mods):
    """``{core module name: [(enclosing module, {port: net})]}`` of the Aurora instances."""
    cores = {}
    for module, (insts, _) in mods.items():
        for typ, _, ports in insts:
            if typ.startswith("aurora_64b66b"):
                cores.setdefault(typ, []).append((module, ports))
    return cores


#: owner core output -> sharer core input, as documented in fpdeep_hw/link/transceiver.py
SHARED_PORTS = {
    "gt_refclk1_out": "refclk1_in", "user_clk_out": "user_clk", "sync_clk_out": "sync_clk",
    "mmcm_not_locked_out": "mmcm_not_locked", "gt_qpllclk_quad1_out": "gt_qpllclk_quad1_in",
    "gt_qpllrefclk_quad1_out": "gt_qpllrefclk_quad1_in",
    "gt_qplllock_quad1_out": "gt_qplllock_quad1_in",
    "gt_qpllrefclklost_quad1_out": "gt_qpllrefclklost_quad1",
}


def check_owner_and_sharer(verilog, owner_lane, sharer_lane, refclk):
    """One owner core (``aurora_64b66b_0``) on ``owner_lane`` with the reference clock pins and
    one sharer (``aurora_64b66b_0_shared``) on ``sharer_lane`` without them, every shared input
    of the sharer on the same top-level net as the owner's output."""
    mods = verilog_modules(verilog)
    cores = aurora_cores(mods)
    assert sorted(cores) == ["aurora_64b66b_0", "aurora_64b66b_0_shared"]
    assert len(cores["aurora_64b66b_0"]) == len(cores["aurora_64b66b_0_shared"]) == 1
    (own_mod, own), = cores["aurora_64b66b_0"]
    (shr_mod, shr), = cores["aurora_64b66b_0_shared"]
    # exactly one core holds the reference clock pins: the owner's, on the refclk's top ports
    assert verilog.count(".gt_refclk1_p(") == verilog.count(".gt_refclk1_n(") == 1
    ref = f"{refclk[0]}_{refclk[1]}"
    assert top_net(mods, own_mod, own["gt_refclk1_p"]) == f"{ref}__p"
    assert top_net(mods, own_mod, own["gt_refclk1_n"]) == f"{ref}__n"
    assert not {"gt_refclk1_p", "gt_refclk1_n", "user_clk_out", "sync_clk_out",
                "mmcm_not_locked_out"} & set(shr)
    assert not {"refclk1_in", "user_clk", "sync_clk", "mmcm_not_locked"} & set(own)
    for out, inp in SHARED_PORTS.items():
        net = top_net(mods, own_mod, own[out])
        assert isinstance(net, str), (out, net)          # the owner's export reaches the top
        assert top_net(mods, shr_mod, shr[inp]) == net, (out, inp)
    # each core on its own lane's pins
    for ports, mod, (res, num) in ((own, own_mod, owner_lane), (shr, shr_mod, sharer_lane)):
        for port, pin in (("txp", "tx__p"), ("txn", "tx__n"), ("rxp", "rx__p"), ("rxn", "rx__n")):
            assert top_net(mods, mod, ports[port]) == f"{res}_{num}__{pin}", (res, num, port)
    # the sharer's reset and status are its own, not its owner's
    for port in ("sys_reset_out", "channel_up", "reset_pb"):
        assert top_net(mods, shr_mod, shr[port]) != top_net(mods, own_mod, own[port]), port
    return mods


def test_vc709_two_lanes_share_the_sfp_refclk():
    platform = VC709Platform()
    plan = platform.build(TwoLinks(), name="top", do_build=False)
    check_owner_and_sharer(plan.files["top.v"], ("sfp", 0), ("sfp", 1), ("sfp_refclk", 0))
    locations = xdc_locations(plan.files["top.xdc"])
    assert {port: locations[port] for port in ("sfp_0__tx__p", "sfp_1__tx__p", "sfp_1__rx__p",
                                               "sfp_refclk_0__p", "sfp_refclk_0__n")} == {
        "sfp_0__tx__p": "AN2", "sfp_1__tx__p": "AP4", "sfp_1__rx__p": "AN6",
        "sfp_refclk_0__p": "AH8", "sfp_refclk_0__n": "AH7"}
    # the reference clock is constrained once
    assert plan.files["top.xdc"].count("create_clock -name sfp_refclk_0__p") == 1


def test_kcu105_and_u280_two_lanes_own_their_refclks():
    # lanes on another reference clock come first: both PHYs own one (no shared core)
    for platform, refclks in ((KCU105ChainPlatform(), ("sfp_refclk_0", "fmc_hpc_refclk_0")),
                              (AlveoU280Platform(), ("qsfp0_refclk_0", "qsfp1_refclk_0"))):
        verilog = platform.build(TwoLinks(), name="top", do_build=False).files["top.v"]
        cores = aurora_cores(verilog_modules(verilog))
        assert list(cores) == ["aurora_64b66b_0"] and len(cores["aurora_64b66b_0"]) == 2
        assert sorted(top_net(verilog_modules(verilog), mod, ports["gt_refclk1_p"])
                      for mod, ports in cores["aurora_64b66b_0"]) == \
            sorted(f"{r}__p" for r in refclks)


def test_u280_sharer_in_the_owners_quad():
    # with the other cage's lanes gone, the second lane shares qsfp0's clock in quad 134
    platform = AlveoU280Platform()
    platform.chain_lanes = tuple(l for l in platform.chain_lanes if l[0] == "qsfp0")
    verilog = platform.build(TwoLinks(), name="top", do_build=False).files["top.v"]
    check_owner_and_sharer(verilog, ("qsfp0", 0), ("qsfp0", 1), ("qsfp0_refclk", 0))


def test_second_phy_requesting_the_same_refclk_fails():
    # why sharers exist: two owners cannot both take the reference clock resource
    class TwoOwners(Elaboratable):
        def elaborate(self, platform):
            m = Module()
            for n in (0, 1):
                m.submodules[f"phy{n}"] = SerialLinkPHY(lane=("sfp", n), refclk=("sfp_refclk", 0))
            return m

    with pytest.raises(ResourceError, match="sfp_refclk"):
        VC709Platform().build(TwoOwners(), name="top", do_build=False)


def test_shared_phy_arguments():
    owner = SerialLinkPHY(lane=("sfp", 0), refclk=("sfp_refclk", 0))
    sharer = SerialLinkPHY(lane=("sfp", 1), owner=owner)
    assert (owner.shared, owner.owner, owner.core) == (False, None, "aurora_64b66b_0")
    assert (sharer.shared, sharer.owner, sharer.refclk, sharer.core) == \
        (True, owner, ("sfp_refclk", 0), "aurora_64b66b_0_shared")
    named = SerialLinkPHY(lane=("sfp", 2), refclk=("sfp_refclk", 0),
                          owner=SerialLinkPHY(lane=("sfp", 0), refclk=("sfp_refclk", 0),
                                              core="link_a"))
    assert named.core == "link_a_shared"
    assert SerialLinkPHY(lane=("sfp", 2), owner=owner, core="quad113_lane2").core == \
        "quad113_lane2"
    with pytest.raises(AttributeError):
        sharer.owner = None
    for kwargs, message in [
        ({"owner": "sfp0"}, "SerialLinkPHY owner must be None or a SerialLinkPHY that owns its "
                            "reference clock, not 'sfp0'"),
        ({"owner": sharer}, f"SerialLinkPHY owner must be None or a SerialLinkPHY that owns its "
                            f"reference clock, not {sharer!r}"),
        ({"owner": owner, "refclk": ("sfp_refclk", 1)},
         "SerialLinkPHY shares its owner's reference clock ('sfp_refclk', 0), not "
         "('sfp_refclk', 1)"),
        ({"owner": owner, "lane": ("sfp", 0)}, "SerialLinkPHY lane ('sfp', 0) is its owner's lane"),
    ]:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            SerialLinkPHY(**kwargs)


def test_shared_phy_model_is_the_loopback():
    # sharing changes only the platform build: a sharer simulates like any PHY
    rng = random.Random(7)
    owner = SerialLinkPHY(lane=("sfp", 0), refclk=("sfp_refclk", 0), model_latency=3)
    dut = SerialLinkPHY(lane=("sfp", 1), owner=owner, model_latency=3, model_depth=5,
                        model_startup=4)
    words = [rng.getrandbits(64) for _ in range(200)]
    out = []
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(dut.tx, words, rng=random.Random(1), p_stall=0.3,
                                    max_cycles=20_000))
    sim.add_testbench(stream_sink(dut.rx, out, count=len(words), rng=random.Random(2),
                                  p_stall=0.3, max_cycles=20_000))
    sim.run()
    assert out == words


# --- chain_lanes_for ------------------------------------------------------------------------------

class _Lanes:
    """A stand-in platform: ``chain_lanes`` and ``gt_channel_sites`` only."""

    def __init__(self, lanes, sites):
        self.chain_lanes = tuple(lanes)
        self.gt_channel_sites = dict(sites)


def test_chain_lanes_for_shares_a_refclk_in_one_quad():
    from fpdeep_hw.board_top import ChainLane, chain_lanes_for, gt_quad
    vc709 = VC709Platform()
    assert chain_lanes_for(vc709, ["prev", "next"]) == {
        "prev": ChainLane(("sfp", 0), ("sfp_refclk", 0), None),
        "next": ChainLane(("sfp", 1), ("sfp_refclk", 0), "prev")}
    # a first or last node: one lane, which owns its clock
    assert chain_lanes_for(vc709, ["next"]) == {
        "next": ChainLane(("sfp", 0), ("sfp_refclk", 0), None)}
    assert chain_lanes_for(vc709, []) == {}
    assert [gt_quad(vc709, ("sfp", n)) for n in range(4)] == [(1, 3)] * 4
    assert gt_quad(KCU105ChainPlatform(), ("fmc_hpc_dp", 4)) == (0, 3)
    assert gt_quad(vc709, ("fmc_hpc_dp", 0)) is None
    # three sides on four lanes of one quad: one owner, two sharers of the same owner
    three = chain_lanes_for(vc709, ["a", "b", "c"])
    assert [(c.lane, c.owner) for c in three.values()] == \
        [(("sfp", 0), None), (("sfp", 1), "a"), (("sfp", 2), "a")]


def test_chain_lanes_for_vc709_with_fmc_lanes():
    from fpdeep_hw.board_top import ChainLane, chain_lanes_for
    table = {n: (f"A{n + 1}", f"B{n + 1}", f"C{n + 1}", f"D{n + 1}") for n in range(2)}
    # FMC lanes with their own clock: the next neighbour owns it (the paper's SFP+ / FMC setup)
    platform = VC709Platform()
    platform.add_fmc_hpc_lanes(table, refclk=("E1", "E2"))
    assert chain_lanes_for(platform, ["prev", "next"])["next"] == \
        ChainLane(("fmc_hpc_dp", 0), ("fmc_hpc_refclk", 0), None)
    # FMC lanes listed on the SFP+ clock: the next neighbour shares it on an SFP+ lane
    platform = VC709Platform()
    platform.add_fmc_hpc_lanes(table)
    assert chain_lanes_for(platform, ["prev", "next"])["next"] == \
        ChainLane(("sfp", 1), ("sfp_refclk", 0), "prev")


def test_chain_lanes_for_never_shares_across_quads():
    from fpdeep_hw.board_top import ChainLane, chain_lanes_for
    refclk = ("ref", 0)
    # two lanes on one clock in different quads, or without a known site: no second lane
    for sites in ({("gt", 0): "GTHE3_CHANNEL_X0Y3", ("gt", 1): "GTHE3_CHANNEL_X0Y4"},
                  {("gt", 0): "GTHE3_CHANNEL_X0Y3"}, {}):
        platform = _Lanes([("gt", 0, refclk), ("gt", 1, refclk)], sites)
        assert chain_lanes_for(platform, ["prev"]) == {"prev": ChainLane(("gt", 0), refclk)}
        with pytest.raises(ValueError, match=r"^_Lanes: no chain lane left for the next "
                                             r"neighbour: a node with 2 neighbours needs 2 "
                                             r"lanes, each with a reference clock of its own or "
                                             r"in the GT quad of the lane owning its clock, but "
                                             r"the platform has gt0, gt1$"):
            chain_lanes_for(platform, ["prev", "next"])
    # same quad (Y 4..7): shared
    platform = _Lanes([("gt", 0, refclk), ("gt", 1, refclk)],
                      {("gt", 0): "GTHE3_CHANNEL_X0Y4", ("gt", 1): "GTHE3_CHANNEL_X0Y7"})
    assert chain_lanes_for(platform, ["prev", "next"])["next"] == \
        ChainLane(("gt", 1), refclk, "prev")


def test_chain_lanes_for_runs_out_of_lanes():
    from fpdeep_hw.board_top import chain_lanes_for
    with pytest.raises(ValueError, match=r"^_Lanes: no chain lane left for the prev neighbour: "
                                         r"a node with 1 neighbours needs 1 lanes, .* but the "
                                         r"platform has none$"):
        chain_lanes_for(_Lanes([], {}), ["prev"])
    one = _Lanes([("sfp", 0, ("ref", 0))], {("sfp", 0): "GTHE2_CHANNEL_X1Y13"})
    with pytest.raises(ValueError, match=r"^_Lanes: no chain lane left for the next neighbour: "
                                         r"a node with 2 neighbours needs 2 lanes, .* but the "
                                         r"platform has sfp0$"):
        chain_lanes_for(one, ["prev", "next"])
    with pytest.raises(ValueError, match=r"^VC709Platform: no chain lane left for the e "
                                         r"neighbour: a node with 5 neighbours needs 5 lanes"):
        chain_lanes_for(VC709Platform(), ["a", "b", "c", "d", "e"])
