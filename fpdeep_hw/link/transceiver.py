"""Serial link PHY: the transceiver and link-layer IP (GTH/GTY + Aurora 64B/66B) as a black box.

This is the only vendor-specific part of the gateware. On a real platform it instantiates an
Aurora 64B/66B core generated in Vivado (``Instance``); in simulation it is a loopback model
with the same user-side interface, so the rest of the design and its tests never see the vendor.

Golden model: the loopback is the identity (every word sent comes back, in order, unchanged).
Test: ``tests/boards/test_platforms.py`` (loopback with random stalls, latency to the cycle,
start-up, and the ``Instance`` in a platform build). Documentation: ``docs/platforms.md``.

The Aurora core assumed (Xilinx PG074, "Aurora 64B/66B LogiCORE IP"; port names as remembered,
not re-read: check them against the core generated in Vivado)
-----------------------------------------------------------------------------------------------
Configuration: 1 lane, duplex, *streaming* user interface (AXI4-Stream without ``tlast``/
``tkeep``), little-endian off, line rate of the board file (10.3125 Gb/s VC709/KCU105, 25.78125
Gb/s U280), reference clock of the lane's quad, *shared logic in core*, no DRP, no native or
user flow control. The component name is the ``core`` argument (default ``aurora_64b66b_0``).

=========================  ====  =============================================================
port                       dir   connected to
=========================  ====  =============================================================
``s_axi_tx_tdata[0:63]``   in    ``tx.payload`` (Aurora bit 0 = our bit 63, first byte sent)
``s_axi_tx_tvalid``        in    ``tx.valid``
``s_axi_tx_tready``        out   ``tx.ready``
``m_axi_rx_tdata[0:63]``   out   ``rx.payload``
``m_axi_rx_tvalid``        out   ``rx.valid`` (the core has no RX ready: see below)
``rxp``, ``rxn``           in    lane resource ``rx`` pins
``txp``, ``txn``           out   lane resource ``tx`` pins
``gt_refclk1_p/_n``        in    reference clock resource pins (the core has the IBUFDS_GTE)
``gt_refclk1_out``         out   ``refclk_out`` attribute (buffered refclk, for other cores)
``init_clk``               in    clock of ``init_domain`` (free-running)
``reset_pb``, ``pma_init`` in    power-on sequence (``POR_*_CYCLES``) or ``init_domain`` reset
``power_down``             in    0
``loopback[2:0]``          in    0 (normal operation)
``user_clk_out``           out   ``user_clk``
``sys_reset_out``          out   ``user_rst``
``channel_up``             out   ``channel_up``
``lane_up``                out   ``lane_up`` attribute
``hard_err``, ``soft_err`` out   ``hard_err``, ``soft_err``
``mmcm_not_locked_out``    out   ``mmcm_not_locked`` attribute
=========================  ====  =============================================================

Ports of the generated core not in this table are left unconnected (Vivado ties unconnected
inputs of an IP to their defaults only if the IP declares them; check the synthesis log). To use
the real core in Vivado: generate it under the component name above with the settings listed,
add the ``.xci`` to the project the platform build writes (``add_files``/``read_ip`` in the
``script_after_read`` override), and select the GT channel site of the lane
(``platform.gt_channel_sites``) in the core's configuration.

The streaming Aurora RX interface has no ready: a word is delivered whether or not ``rx.ready``
is high. On hardware the consumer must always be ready, or the link layer above must keep the
far end from sending more than it can buffer (credits; Aurora's native flow control is not
used). The simulation model honours ``rx.ready`` with a bounded buffer and credit-limited TX,
so a test that stalls RX sees back-pressure a hardware link would not give.
"""


import re

from amaranth.hdl import C, ClockSignal, DomainRenamer, Instance, Module, ResetSignal, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

__all__ = ["SerialLinkPHY"]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


def _check_resource(what, value):
    if value is None:
        return
    if (not isinstance(value, tuple) or len(value) != 2 or not isinstance(value[0], str) or
            not isinstance(value[1], int) or isinstance(value[1], bool) or value[1] < 0):
        raise ValueError(f"SerialLinkPHY {what} must be None or a (resource name, number) pair, "
                         f"not {value!r}")


class SerialLinkPHY(wiring.Component):
    """One serial lane: 64-bit words in, 64-bit words out, link status flags.

    On a platform (``platform`` not ``None``) :meth:`elaborate` requests the lane and
    reference-clock resources (``dir="-"``) and instantiates the Aurora 64B/66B core described in
    the module docstring. The streams then run in the core's user clock: the top-level module
    must create the clock domain ``domain`` and drive it from ``user_clk`` / ``user_rst``::

        m.domains.link = ClockDomain("link")
        m.d.comb += [ClockSignal("link").eq(phy.user_clk), ResetSignal("link").eq(phy.user_rst)]

    In simulation (``platform`` is ``None``) it is a loopback model clocked by ``domain``:

    - ``channel_up`` rises ``model_startup`` cycles after reset (at once if 0) and stays high;
      ``soft_err`` and ``hard_err`` stay low; ``user_clk``/``user_rst`` mirror ``domain``'s clock
      and reset (so the top-level must not drive ``domain`` from them in simulation).
    - ``tx.ready`` is ``channel_up`` and fewer than ``model_depth`` words in flight or buffered.
    - A word transferred on ``tx`` in cycle ``t`` is valid on ``rx`` from cycle
      ``t + model_latency`` (``LATENCY``) if the buffer ahead of it is empty; words come back in
      order, unchanged; ``rx`` honours ``ready``.

    Parameters
    ----------
    lane : tuple, optional
        ``(resource name, number)`` of the lane, e.g. ``("sfp", 0)``; needed on a platform.
    refclk : tuple, optional
        ``(resource name, number)`` of the lane's reference clock, e.g. ``("sfp_refclk", 0)``;
        needed on a platform. Only one PHY per reference clock can be built in this version (the
        core owns the clock buffer); see ``docs/platforms.md``.
    core : str
        Module name of the Aurora core (the Vivado component name).
    domain : str
        Clock domain of ``tx`` and ``rx``.
    init_domain : str
        Free-running clock domain for the core's ``init_clk`` and reset (platform build only).
    model_latency : int
        Simulation model: cycles from a TX transfer to the word on ``rx`` (at least 1).
    model_depth : int
        Simulation model: words that may be in flight or buffered (at least 1).
    model_startup : int
        Simulation model: cycles after reset until ``channel_up`` (at least 0).

    Members
    -------
    tx : ``In(stream.Signature(64))``
        Words to send.
    rx : ``Out(stream.Signature(64))``
        Words received.
    channel_up : ``Out(1)``
        The link is up (Aurora ``channel_up``); words are accepted only while it is high.
    soft_err : ``Out(1)``
        Aurora soft error (a corrupted block was received); a pulse per error.
    hard_err : ``Out(1)``
        Aurora hard error (the link must be reset).
    user_clk : ``Out(1)``
        Clock of the user interface (Aurora ``user_clk_out``; ``domain``'s clock in simulation).
    user_rst : ``Out(1)``
        Reset for the user clock domain (Aurora ``sys_reset_out``; ``domain``'s reset in
        simulation).
    """

    tx: In(stream.Signature(64))
    rx: Out(stream.Signature(64))
    channel_up: Out(1)
    soft_err: Out(1)
    hard_err: Out(1)
    user_clk: Out(1)
    user_rst: Out(1)

    def __init__(self, *, lane=None, refclk=None, core="aurora_64b66b_0", domain="sync",
                 init_domain="sync", model_latency=4, model_depth=16, model_startup=8):
        _check_resource("lane", lane)
        _check_resource("reference clock", refclk)
        if not isinstance(core, str) or not _IDENTIFIER.match(core):
            raise ValueError(f"SerialLinkPHY core name must be a Verilog identifier, not {core!r}")
        for what, value in (("domain", domain), ("init domain", init_domain)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"SerialLinkPHY {what} must be a non-empty string, not {value!r}")
        for what, value, least in (("model latency", model_latency, 1),
                                   ("model depth", model_depth, 1),
                                   ("model startup", model_startup, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                kind = "positive" if least == 1 else "non-negative"
                raise ValueError(f"SerialLinkPHY {what} must be a {kind} integer, not {value!r}")
        self._lane = lane
        self._refclk = refclk
        self._core = core
        self._domain = domain
        self._init_domain = init_domain
        self._model_latency = model_latency
        self._model_depth = model_depth
        self._model_startup = model_startup
        super().__init__()
        # Core outputs not in the signature (platform build only).
        self.refclk_out = Signal()
        self.lane_up = Signal()
        self.mmcm_not_locked = Signal()

    lane = property(lambda self: self._lane)
    refclk = property(lambda self: self._refclk)
    core = property(lambda self: self._core)
    domain = property(lambda self: self._domain)
    init_domain = property(lambda self: self._init_domain)
    model_latency = property(lambda self: self._model_latency)
    model_depth = property(lambda self: self._model_depth)
    model_startup = property(lambda self: self._model_startup)

    #: Hardware power-on reset: cycles of ``init_clk`` with ``reset_pb`` high after configuration.
    POR_CYCLES = 1 << 20
    #: Hardware power-on reset: cycles of ``init_clk`` with ``pma_init`` high after configuration.
    POR_PMA_CYCLES = 1 << 19

    @property
    def LATENCY(self):
        """Simulation model latency in cycles (``model_latency``); on hardware see PG074."""
        return self._model_latency

    def elaborate(self, platform):
        if platform is None:
            return self._elaborate_model()
        return self._elaborate_core(platform)

    def _elaborate_core(self, platform):
        if self._lane is None or self._refclk is None:
            raise ValueError("SerialLinkPHY needs a lane and a reference clock resource to be "
                             "built for a platform")
        m = Module()
        lane = platform.request(*self._lane, dir="-")
        refclk = platform.request(*self._refclk, dir="-")

        # Power-on reset sequence in init_clk cycles: pma_init and reset_pb start high after
        # configuration (or a reset of init_domain); pma_init is released first, reset_pb
        # POR_CYCLES - POR_PMA_CYCLES cycles later (PG074's order, as remembered).
        init = m.d[self._init_domain]
        por = Signal(range(self.POR_CYCLES + 1))
        with m.If(por != self.POR_CYCLES):
            init += por.eq(por + 1)
        init_rst = ResetSignal(self._init_domain, allow_reset_less=True)
        pma_init = Signal()
        reset_pb = Signal()
        m.d.comb += [
            pma_init.eq((por < self.POR_PMA_CYCLES) | init_rst),
            reset_pb.eq((por != self.POR_CYCLES) | init_rst),
        ]
        m.submodules.core = Instance(self._core,
            i_s_axi_tx_tdata=self.tx.payload,
            i_s_axi_tx_tvalid=self.tx.valid,
            o_s_axi_tx_tready=self.tx.ready,
            o_m_axi_rx_tdata=self.rx.payload,
            o_m_axi_rx_tvalid=self.rx.valid,
            i_rxp=lane.rx.p,
            i_rxn=lane.rx.n,
            o_txp=lane.tx.p,
            o_txn=lane.tx.n,
            i_gt_refclk1_p=refclk.p,
            i_gt_refclk1_n=refclk.n,
            o_gt_refclk1_out=self.refclk_out,
            i_init_clk=ClockSignal(self._init_domain),
            i_reset_pb=reset_pb,
            i_pma_init=pma_init,
            i_power_down=C(0, 1),
            i_loopback=C(0, 3),
            o_user_clk_out=self.user_clk,
            o_sys_reset_out=self.user_rst,
            o_channel_up=self.channel_up,
            o_lane_up=self.lane_up,
            o_hard_err=self.hard_err,
            o_soft_err=self.soft_err,
            o_mmcm_not_locked_out=self.mmcm_not_locked,
        )
        return m

    def _elaborate_model(self):
        m = Module()
        sync = m.d[self._domain]
        depth = self._model_depth

        m.d.comb += [
            self.user_clk.eq(ClockSignal(self._domain)),
            self.user_rst.eq(ResetSignal(self._domain)),
        ]

        # Link start-up: channel_up after model_startup cycles.
        if self._model_startup == 0:
            m.d.comb += self.channel_up.eq(1)
        else:
            startup = Signal(range(self._model_startup + 1))
            with m.If(startup != self._model_startup):
                sync += startup.eq(startup + 1)
            m.d.comb += self.channel_up.eq(startup == self._model_startup)

        # Words in flight (delay line) plus buffered (FIFO): TX is refused at `depth`.
        # The credit count keeps at most `depth` words in the FIFO; a FIFO of depth 1 would have
        # zero-width address wires in Verilog, so it is given 2 entries.
        fifo = SyncFIFO(width=64, depth=max(depth, 2))
        m.submodules.fifo = DomainRenamer(self._domain)(fifo)
        occupancy = Signal(range(depth + 1))
        tx_take = Signal()
        rx_take = Signal()
        m.d.comb += [
            self.tx.ready.eq(self.channel_up & (occupancy < depth)),
            tx_take.eq(self.tx.valid & self.tx.ready),
            rx_take.eq(self.rx.valid & self.rx.ready),
        ]
        sync += occupancy.eq(occupancy + tx_take - rx_take)

        # Delay line of model_latency - 1 register stages into the FIFO (whose own latency is 1).
        valid, payload = tx_take, self.tx.payload
        for stage in range(self._model_latency - 1):
            next_valid = Signal(name=f"stage{stage}_valid")
            next_payload = Signal(64, name=f"stage{stage}_payload", reset_less=True)
            sync += [next_valid.eq(valid), next_payload.eq(payload)]
            valid, payload = next_valid, next_payload
        m.d.comb += [
            fifo.w_data.eq(payload),
            fifo.w_en.eq(valid),
            self.rx.payload.eq(fifo.r_data),
            self.rx.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.rx.ready),
        ]
        return m
