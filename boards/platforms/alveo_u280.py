"""AMD/Xilinx Alveo U280 (xcu280-fsvh2892-2L-e, Virtex UltraScale+ HBM).

Pin provenance (see ``docs/platforms.md``); two public sources agree on every pin used here:
the "U280 master XDC" posted on the Xilinx forum (copied in bsc-loca/100gb-ethernet,
``xdc/ethernet_test_alveo280.xdc``) and Alex Forencich's AU280 constraints
(alexforencich/verilog-ethernet, ``example/AU280/fpga_10g/fpga.xdc``); LiteX-Boards'
``alveo_u280.py`` has the same system clock.

* ``sysclk`` 0: 100 MHz, BJ43/BJ44, LVDS (SYSCLK0). Default clock.
* ``qsfp0`` 0-3 (GTY quad 134) and ``qsfp1`` 0-3 (GTY quad 135): the two QSFP28 cages, lanes
  numbered as QSFPn_RX1..4 / TX1..4 (0-based here).
* ``qsfp0_refclk`` 0 (T42/T43) and ``qsfp1_refclk`` 0 (P42/P43): MGTREFCLK0 of each quad, 156.25 MHz
  from an Si570 that the master XDC calls "not user re-programmable". The cages' other reference
  clock (MGTREFCLK1, an Si546 whose frequency select pin chooses 156.25 or 161.1328125 MHz) is
  left out: the two sources disagree on the select polarity.
* ``hbm_cattrip`` 0: D32, LVCMOS18. The card's satellite controller cuts power when this pin is
  high or undriven; unless the design requests it, the platform drives it low.

The card has no user LEDs in either source (LiteX-Boards lists "gpio_led" on C32/D32/D31, but
D32 is HBM_CATTRIP), so none is declared. The USB-UART is left out because the sources disagree
on which of A28/B33 is the FPGA's transmit pin.
"""

from __future__ import annotations

from amaranth.build import Attrs, Clock, DiffPairs, Pins, Resource, ResourceError
from amaranth.hdl import Elaboratable, Fragment, Module
from amaranth.lib import io
from amaranth.vendor import XilinxPlatform

from ._common import RefClkResource, lane_pins

__all__ = ["AlveoU280Platform"]


# (tx_p, tx_n, rx_p, rx_n) for QSFPn lanes 1..4.
_QSFP0_LANES = (
    ("L48", "L49", "L53", "L54"),   # MGTY*0_134, GTYE4_CHANNEL_X0Y40
    ("L44", "L45", "K51", "K52"),   # MGTY*1_134, GTYE4_CHANNEL_X0Y41
    ("K46", "K47", "J53", "J54"),   # MGTY*2_134, GTYE4_CHANNEL_X0Y42
    ("J48", "J49", "H51", "H52"),   # MGTY*3_134, GTYE4_CHANNEL_X0Y43
)
_QSFP1_LANES = (
    ("G48", "G49", "G53", "G54"),   # MGTY*0_135, GTYE4_CHANNEL_X0Y44
    ("E48", "E49", "F51", "F52"),   # MGTY*1_135, GTYE4_CHANNEL_X0Y45
    ("C48", "C49", "E53", "E54"),   # MGTY*2_135, GTYE4_CHANNEL_X0Y46
    ("A49", "A50", "D51", "D52"),   # MGTY*3_135, GTYE4_CHANNEL_X0Y47
)


class _DriveCattripLow(Elaboratable):
    """Wraps a design: drives ``hbm_cattrip`` low unless the design requested that pin itself."""

    def __init__(self, design):
        self.design = design

    def elaborate(self, platform):
        fragment = Fragment.get(self.design, platform)
        try:
            cattrip = platform.request("hbm_cattrip", 0, dir="-")
        except ResourceError:
            return fragment     # the design drives it (e.g. from the HBM IP's CATTRIP outputs)
        m = Module()
        m.submodules.buffer = buffer = io.Buffer("o", cattrip)
        m.d.comb += buffer.o.eq(0)
        fragment.add_subfragment(Fragment.get(m, platform), "hbm_cattrip_low")
        return fragment


class AlveoU280Platform(XilinxPlatform):
    """Amaranth platform of the Alveo U280.

    ``chain_lanes`` lists the 8 QSFP28 lanes of ``boards/alveo-u280.yaml`` (one cage per
    neighbour) as (resource, number, refclk resource) triples; ``gt_channel_sites`` gives their
    GTYE4 sites.
    """

    device      = "xcu280"
    package     = "fsvh2892"
    speed       = "2L-e"
    default_clk = "sysclk"
    resources   = [
        Resource("sysclk", 0, DiffPairs("BJ43", "BJ44", dir="i"),
                 Clock(100e6), Attrs(IOSTANDARD="LVDS")),
        *lane_pins("qsfp0", _QSFP0_LANES),
        *lane_pins("qsfp1", _QSFP1_LANES),
        RefClkResource("qsfp0_refclk", 0, p="T42", n="T43", frequency=156.25e6),
        RefClkResource("qsfp1_refclk", 0, p="P42", n="P43", frequency=156.25e6),
        Resource("hbm_cattrip", 0, Pins("D32", dir="o"),
                 Attrs(IOSTANDARD="LVCMOS18", PULLTYPE="PULLDOWN")),
    ]
    connectors  = []

    chain_lanes = (
        *(("qsfp0", number, ("qsfp0_refclk", 0)) for number in range(4)),
        *(("qsfp1", number, ("qsfp1_refclk", 0)) for number in range(4)),
    )

    gt_channel_sites = {
        **{("qsfp0", number): f"GTYE4_CHANNEL_X0Y{40 + number}" for number in range(4)},
        **{("qsfp1", number): f"GTYE4_CHANNEL_X0Y{44 + number}" for number in range(4)},
    }

    def prepare(self, elaboratable, name="top", **kwargs):
        return super().prepare(_DriveCattripLow(elaboratable), name, **kwargs)
