"""Xilinx Virtex-7 VC709 Connectivity Kit (xc7vx690t-ffg1761-2): the FPDeep paper's board.

Pin provenance (see ``docs/platforms.md``):

* 200 MHz system clock H19/G18, DIFF_SSTL15: the project's reference facts, and the same pins in
  Alex Forencich's public VC709 constraints (verilog-ethernet family, ``XDC constraints for the
  Xilinx VC709``; there DIFF_SSTL15_DCI).
* LEDs (DS2..DS9), USB-UART (CP2103 U44), SFP+ lanes, SFP+ TX-disable lines and the 156.25 MHz
  SFP+ reference clock: the same public constraints. The SFP+ TX/RX pins and the reference clock
  pins also agree with the project's reference facts (GTH quad 113, AN2/AM8, AP4/AN6, AM4/AL6,
  AL2/AJ6, refclk AH8/AH7). SFP+ numbering follows that file, which swaps modules 0 and 1
  relative to the schematic net names to match the board layout.
* FMC HPC gigabit lanes DP0..DP7: **not verified**. No public pin table for the VC709's FMC HPC
  transceivers was found, so none is shipped; :meth:`VC709Platform.add_fmc_hpc_lanes` adds them
  from a table the user copies from the VC709 user guide (UG887) or master XDC.

The SFP+ reference clock comes from the Si5324 jitter attenuator (U24), which must be
configured over I2C before the clock runs; that is not done by this platform.
"""

from __future__ import annotations

import re

from amaranth.build import Attrs, Clock, DiffPairs, Pins, Resource
from amaranth.vendor import XilinxPlatform
from amaranth_boards.resources import LEDResources, UARTResource

from ._common import LaneResource, RefClkResource, lane_pins

__all__ = ["VC709Platform"]


# (tx_p, tx_n, rx_p, rx_n) per SFP+ cage, numbered as the board layout (see module docstring).
_SFP_LANES = (
    ("AN2", "AN1", "AM8", "AM7"),   # MGTH*2_113, GTHE2_CHANNEL_X1Y13
    ("AP4", "AP3", "AN6", "AN5"),   # MGTH*3_113, GTHE2_CHANNEL_X1Y12
    ("AM4", "AM3", "AL6", "AL5"),   # MGTH*1_113, GTHE2_CHANNEL_X1Y14
    ("AL2", "AL1", "AJ6", "AJ5"),   # MGTH*0_113, GTHE2_CHANNEL_X1Y15
)

_PIN_NAME = re.compile(r"^[A-Z]{1,2}[0-9]{1,2}$")


class VC709Platform(XilinxPlatform):
    """Amaranth platform of the VC709.

    Resources: ``clk200`` (default clock), ``led`` 0-7, ``uart`` 0, ``sfp`` 0-3 (transceiver lanes,
    ``tx``/``rx`` differential pairs), ``sfp_refclk`` 0 (156.25 MHz, MGTREFCLK0 of quad 113) and
    ``sfp_tx_disable`` 0 (4 bits, drive 0 to enable the SFP+ transmitters).

    ``chain_lanes`` lists the lanes a chain link may use, as (resource, number, refclk resource)
    triples; ``gt_channel_sites`` gives the GTHE2 channel site of each lane, to be selected when
    the Aurora core is generated in Vivado. The four SFP+ lanes are in one quad (113) on one
    reference clock, so a middle node's two PHYs share it (``sfp`` 0 owns it, ``sfp`` 1 takes it
    from that core: ``fpdeep_hw.board_top.chain_lanes_for``, ``docs/platforms.md``).
    """

    device      = "xc7vx690t"
    package     = "ffg1761"
    speed       = "2"
    default_clk = "clk200"
    resources   = [
        Resource("clk200", 0, DiffPairs("H19", "G18", dir="i"),
                 Clock(200e6), Attrs(IOSTANDARD="DIFF_SSTL15")),

        *LEDResources(pins="AM39 AN39 AR37 AT37 AR35 AP41 AP42 AU39",
                      attrs=Attrs(IOSTANDARD="LVCMOS18")),

        # USB-UART (Silicon Labs CP2103, U44): tx is the FPGA's output.
        UARTResource(0, rx="AU33", tx="AU36", attrs=Attrs(IOSTANDARD="LVCMOS18")),

        *lane_pins("sfp", _SFP_LANES),
        RefClkResource("sfp_refclk", 0, p="AH8", n="AH7", frequency=156.25e6),
        Resource("sfp_tx_disable", 0, Pins("Y42 AB41 AC38 AC40", dir="o"),
                 Attrs(IOSTANDARD="LVCMOS18")),
    ]
    connectors  = []

    gt_channel_sites = {
        ("sfp", 0): "GTHE2_CHANNEL_X1Y13",
        ("sfp", 1): "GTHE2_CHANNEL_X1Y12",
        ("sfp", 2): "GTHE2_CHANNEL_X1Y14",
        ("sfp", 3): "GTHE2_CHANNEL_X1Y15",
    }

    def __init__(self, *, toolchain=None):
        super().__init__(toolchain=toolchain)
        self.chain_lanes = tuple(("sfp", number, ("sfp_refclk", 0)) for number in range(4))
        self.gt_channel_sites = dict(type(self).gt_channel_sites)

    def add_fmc_hpc_lanes(self, lanes, *, refclk=None, refclk_frequency=156.25e6):
        """Add FMC HPC gigabit lanes ``fmc_hpc_dp`` N from a user-supplied pin table.

        The VC709 ships without these pins because they could not be verified from a public
        source (see the module docstring). Copy them from the VC709 user guide (UG887) or master
        XDC, e.g. for an SMA FMC card carrying 8 links as in the FPDeep paper.

        Parameters
        ----------
        lanes : dict
            ``{dp_number: (tx_p, tx_n, rx_p, rx_n)}``, dp_number 0..7 (``DPn_C2M`` pins are
            ``tx``, ``DPn_M2C`` pins are ``rx``).
        refclk : tuple, optional
            ``(p, n)`` pins of the FMC ``GBTCLK0_M2C`` reference clock; added as
            ``fmc_hpc_refclk`` 0 and used by these lanes in ``chain_lanes``. Without it the
            lanes are listed with the SFP+ reference clock (and, their quad being unknown until
            their sites are added to ``gt_channel_sites``, never share it with another lane).
        refclk_frequency : float
            Frequency of that reference clock, in Hz.
        """
        if not isinstance(lanes, dict) or not lanes:
            raise TypeError(f"FMC HPC lanes must be a non-empty dict of lane number to "
                            f"(tx_p, tx_n, rx_p, rx_n) pins, not {lanes!r}")
        resources = []
        for number, pins in sorted(lanes.items()):
            if not isinstance(number, int) or isinstance(number, bool) or not 0 <= number <= 7:
                raise ValueError(f"FMC HPC lane number must be an integer from 0 to 7, "
                                 f"not {number!r}")
            if (not isinstance(pins, tuple) or len(pins) != 4 or
                    not all(isinstance(pin, str) and _PIN_NAME.match(pin) for pin in pins)):
                raise ValueError(f"FMC HPC lane {number} pins must be a tuple of 4 package pin "
                                 f"names (tx_p, tx_n, rx_p, rx_n), not {pins!r}")
            tx_p, tx_n, rx_p, rx_n = pins
            resources.append(LaneResource("fmc_hpc_dp", number,
                                          tx_p=tx_p, tx_n=tx_n, rx_p=rx_p, rx_n=rx_n))
        refclk_resource = ("sfp_refclk", 0)
        if refclk is not None:
            if (not isinstance(refclk, tuple) or len(refclk) != 2 or
                    not all(isinstance(pin, str) and _PIN_NAME.match(pin) for pin in refclk)):
                raise ValueError(f"FMC HPC reference clock must be a (p, n) pair of package pin "
                                 f"names, not {refclk!r}")
            resources.append(RefClkResource("fmc_hpc_refclk", 0, p=refclk[0], n=refclk[1],
                                            frequency=refclk_frequency))
            refclk_resource = ("fmc_hpc_refclk", 0)
        self.add_resources(resources)
        self.chain_lanes += tuple(("fmc_hpc_dp", number, refclk_resource)
                                  for number in sorted(lanes))
