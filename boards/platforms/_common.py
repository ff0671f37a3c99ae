"""Resource helpers shared by the board platforms: transceiver lanes and their reference clocks.

A transceiver lane is a resource with two differential subsignals, ``tx`` (FPGA to cable) and
``rx`` (cable to FPGA). Transceiver pins are dedicated: they take no ``IOSTANDARD`` and no
``io.Buffer``; the transceiver primitive (inside the vendor link core, see
:mod:`fpdeep_hw.link.transceiver`) connects to them directly. Request them with ``dir="-"``.
"""

from __future__ import annotations

from amaranth.build import Clock, DiffPairs, Resource, Subsignal

__all__ = ["LaneResource", "RefClkResource", "lane_pins"]


def LaneResource(name, number, *, tx_p, tx_n, rx_p, rx_n):
    """A serial transceiver lane: ``tx`` and ``rx`` differential pairs on dedicated MGT pins."""
    return Resource(name, number,
                    Subsignal("tx", DiffPairs(tx_p, tx_n, dir="o", assert_width=1)),
                    Subsignal("rx", DiffPairs(rx_p, rx_n, dir="i", assert_width=1)))


def RefClkResource(name, number, *, p, n, frequency):
    """A transceiver reference clock input on dedicated ``MGTREFCLK`` pins."""
    return Resource(name, number, DiffPairs(p, n, dir="i", assert_width=1), Clock(frequency))


def lane_pins(name, table):
    """Lane resources ``name`` 0, 1, ... from ``table``: a sequence of (tx_p, tx_n, rx_p, rx_n)."""
    return [LaneResource(name, number, tx_p=tx_p, tx_n=tx_n, rx_p=rx_p, rx_n=rx_n)
            for number, (tx_p, tx_n, rx_p, rx_n) in enumerate(table)]
