"""Xilinx Kintex UltraScale KCU105 (xcku040-ffva1156-2-e): amaranth-boards' platform plus lanes.

:class:`amaranth_boards.kcu105.KCU105Platform` describes only the 125 MHz clock and the 8 LEDs.
:class:`KCU105ChainPlatform` keeps those (``clk125`` stays the default clock) and adds what the
chain uses. Pin provenance (see ``docs/platforms.md``): Alex Forencich's public KCU105
constraints (verilog-ethernet family, ``XDC constraints for the Xilinx KCU105 board``), which
also list the amaranth-boards LED and clock pins unchanged:

* ``sfp`` 0-1: SFP+ cages on GTH quad 226 (TX U4/U3, RX T2/T1; TX W4/W3, RX V2/V1) and
  ``sfp_refclk`` 0 (P6/P5, MGTREFCLK0 of quad 227, 156.25 MHz from the Si570 through an Si53340
  buffer); ``sfp_tx_disable`` 0 (AL8, D28; the source names them ``sfp_tx_disable_b``, so they are
  declared inverted: drive 0 to enable the transmitters).
* ``fmc_hpc_dp`` 0-7: the FMC HPC (J22) gigabit lanes DP0..DP7 on GTH quads 228 (DP0-3) and 227
  (DP4-7), with ``fmc_hpc_refclk`` 0 (GBTCLK0_M2C on K6/K5, frequency set by the FMC card;
  156.25 MHz assumed) and 1 (GBTCLK1_M2C on H6/H5).
* ``uart`` 0 (CP2105 U34, tx K26, rx G25) and ``clk300`` 0 (AK17/AK16, DIFF_SSTL12).
"""

from __future__ import annotations

from amaranth.build import Attrs, Clock, DiffPairs, PinsN, Resource
from amaranth_boards.kcu105 import KCU105Platform
from amaranth_boards.resources import UARTResource

from ._common import RefClkResource, lane_pins

__all__ = ["KCU105ChainPlatform"]


_SFP_LANES = (
    ("U4", "U3", "T2", "T1"),       # MGTH*2_226, CHANNEL_X0Y10
    ("W4", "W3", "V2", "V1"),       # MGTH*1_226, CHANNEL_X0Y9
)

# FMC HPC J22 DPn_C2M (tx) and DPn_M2C (rx) pins.
_FMC_HPC_LANES = (
    ("F6", "F5", "E4", "E3"),       # DP0, MGTH*0_228, CHANNEL_X0Y16
    ("D6", "D5", "D2", "D1"),       # DP1, MGTH*1_228, CHANNEL_X0Y17
    ("C4", "C3", "B2", "B1"),       # DP2, MGTH*2_228, CHANNEL_X0Y18
    ("B6", "B5", "A4", "A3"),       # DP3, MGTH*3_228, CHANNEL_X0Y19
    ("N4", "N3", "M2", "M1"),       # DP4, MGTH*0_227, CHANNEL_X0Y12
    ("J4", "J3", "H2", "H1"),       # DP5, MGTH*2_227, CHANNEL_X0Y14
    ("L4", "L3", "K2", "K1"),       # DP6, MGTH*1_227, CHANNEL_X0Y13
    ("G4", "G3", "F2", "F1"),       # DP7, MGTH*3_227, CHANNEL_X0Y15
)


class KCU105ChainPlatform(KCU105Platform):
    """KCU105 with its SFP+ and FMC HPC transceiver lanes, UART and 300 MHz clock.

    ``chain_lanes`` lists the 10 lanes of ``boards/kcu105.yaml`` (2 SFP+ and 8 FMC HPC) as
    (resource, number, refclk resource) triples; ``gt_channel_sites`` gives their GTHE3 sites.
    """

    resources = [
        *KCU105Platform.resources,
        Resource("clk300", 0, DiffPairs("AK17", "AK16", dir="i"),
                 Clock(300e6), Attrs(IOSTANDARD="DIFF_SSTL12")),
        UARTResource(0, rx="G25", tx="K26", attrs=Attrs(IOSTANDARD="LVCMOS18")),
        *lane_pins("sfp", _SFP_LANES),
        RefClkResource("sfp_refclk", 0, p="P6", n="P5", frequency=156.25e6),
        Resource("sfp_tx_disable", 0, PinsN("AL8 D28", dir="o"), Attrs(IOSTANDARD="LVCMOS18")),
        *lane_pins("fmc_hpc_dp", _FMC_HPC_LANES),
        RefClkResource("fmc_hpc_refclk", 0, p="K6", n="K5", frequency=156.25e6),
        RefClkResource("fmc_hpc_refclk", 1, p="H6", n="H5", frequency=156.25e6),
    ]

    chain_lanes = (
        *(("sfp", number, ("sfp_refclk", 0)) for number in range(2)),
        # DP0-3 sit in quad 228 with the FMC card's GBTCLK0; DP4-7 in quad 227 with the Si570.
        *(("fmc_hpc_dp", number, ("fmc_hpc_refclk", 0)) for number in range(4)),
        *(("fmc_hpc_dp", number, ("sfp_refclk", 0)) for number in range(4, 8)),
    )

    gt_channel_sites = {
        ("sfp", 0): "GTHE3_CHANNEL_X0Y10",
        ("sfp", 1): "GTHE3_CHANNEL_X0Y9",
        **{("fmc_hpc_dp", number): f"GTHE3_CHANNEL_X0Y{site}"
           for number, site in enumerate((16, 17, 18, 19, 12, 14, 13, 15))},
    }
