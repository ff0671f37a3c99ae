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
Gb/s U280), reference clock of the lane's quad, no DRP, no native or user flow control.

A PHY either **owns** its reference clock (``owner=None``) or **shares** the reference clock and
quad PLL of another PHY's core (``owner=`` that PHY), as several lanes of one GT quad do on real
hardware (VC709: the four SFP+ lanes of quad 113 on ``sfp_refclk`` 0):

- An owner instantiates the core generated with *shared logic in core* (component name ``core``,
  default ``aurora_64b66b_0``): the core holds the reference clock's ``IBUFDS_GTE``, the quad's
  ``GT*_COMMON`` (QPLL) and the user-clock module, and exports the buffered reference clock, the
  QPLL clocks and status and its user and sync clocks for other cores.
- A sharer instantiates the core generated with *shared logic in example design* (component name
  ``core``, default ``<owner's core>_shared``, e.g. ``aurora_64b66b_0_shared``), fed from the
  owner's exports: it has no reference clock pins, no QPLL and no clock module of its own, and
  its user interface runs in the owner's user clock (``user_clk`` is the owner's). A sharer must
  sit in the owner's quad (the QPLL clocks do not leave the quad); ``fpdeep_hw.board_top``'s
  ``chain_lanes_for`` only pairs lanes of one quad.

Ports of both variants (``owner`` / ``sharer`` column: which of them has the port):

===============================  ===  ===  ====  =======================================================
port                             own  shr  dir   connected to
===============================  ===  ===  ====  =======================================================
``s_axi_tx_tdata[0:63]``         x    x    in    ``tx.payload`` (Aurora bit 0 = our bit 63, first byte sent)
``s_axi_tx_tvalid``              x    x    in    ``tx.valid``
``s_axi_tx_tready``              x    x    out   ``tx.ready``
``m_axi_rx_tdata[0:63]``         x    x    out   ``rx.payload``
``m_axi_rx_tvalid``              x    x    out   ``rx.valid`` (the core has no RX ready: see below)
``rxp``, ``rxn``                 x    x    in    lane resource ``rx`` pins
``txp``, ``txn``                 x    x    out   lane resource ``tx`` pins
``init_clk``                     x    x    in    clock of ``init_domain`` (free-running)
``reset_pb``, ``pma_init``       x    x    in    power-on sequence (``POR_*_CYCLES``) or ``init_domain`` reset
``power_down``                   x    x    in    0
``loopback[2:0]``                x    x    in    0 (normal operation)
``sys_reset_out``                x    x    out   ``user_rst``
``channel_up``                   x    x    out   ``channel_up``
``lane_up``                      x    x    out   ``lane_up`` attribute
``hard_err``, ``soft_err``       x    x    out   ``hard_err``, ``soft_err``
``gt_refclk1_p/_n``              x         in    reference clock resource pins (the core has the IBUFDS_GTE)
``gt_refclk1_out``               x         out   ``refclk_out`` attribute (buffered refclk, for sharers)
``user_clk_out``                 x         out   ``user_clk``
``sync_clk_out``                 x         out   ``sync_clk`` attribute
``mmcm_not_locked_out``          x         out   ``mmcm_not_locked`` attribute
``gt_qpllclk_quad1_out``         x         out   ``qpll_clk`` attribute
``gt_qpllrefclk_quad1_out``      x         out   ``qpll_refclk`` attribute
``gt_qplllock_quad1_out``        x         out   ``qpll_lock`` attribute
``gt_qpllrefclklost_quad1_out``  x         out   ``qpll_refclk_lost`` attribute
``refclk1_in``                        x    in    owner's ``refclk_out``
``user_clk``, ``sync_clk``            x    in    owner's ``user_clk``, ``sync_clk``
``mmcm_not_locked``                   x    in    owner's ``mmcm_not_locked``
``gt_qpllclk_quad1_in``               x    in    owner's ``qpll_clk``
``gt_qpllrefclk_quad1_in``            x    in    owner's ``qpll_refclk``
``gt_qplllock_quad1_in``              x    in    owner's ``qpll_lock``
``gt_qpllrefclklost_quad1``           x    in    owner's ``qpll_refclk_lost``
``gt_to_common_qpllreset_out``        x    out   ``qpll_reset`` attribute (not connected further: the
                                                 owner's QPLL is reset by the owner's own ``pma_init``)
===============================  ===  ===  ====  =======================================================

The QPLL port names are the least certain: the ``quad1`` in them is the core's numbering of the
quads it uses (public designs show ``quad1`` and ``quad2``), and older 7-series cores name the
lock and lost ports ``gt_qplllock_out`` / ``gt_qpllrefclklost_out`` (owner) and
``gt_qplllock_in`` / ``gt_qpllrefclklost_in`` (sharer). The sharer's ``reset_pb`` and
``pma_init`` get their own power-on sequence, which runs in step with the owner's (same
``init_domain``, same counts).

Ports of the generated cores not in this table are left unconnected (Vivado ties unconnected
inputs of an IP to their defaults only if the IP declares them; check the synthesis log). To use
the real cores in Vivado: generate them under the component names above with the settings
listed, add the ``.xci`` files to the project the platform build writes (``add_files``/
``read_ip`` in the ``script_after_read`` override), and select the GT channel site of the lane
(``platform.gt_channel_sites``) in each core's configuration.

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

    On a platform (``platform`` not ``None``) :meth:`elaborate` requests the lane resource
    (``dir="-"``) and instantiates the Aurora 64B/66B core described in the module docstring:
    an owner (``owner=None``) also requests the reference clock and instantiates the core with
    shared logic; a sharer (``owner=`` another PHY on the same reference clock and quad) leaves
    the reference clock to its owner and instantiates the core without shared logic, fed from the
    owner's clocks. The streams then run in the core's user clock (a sharer's is its owner's):
    the top-level module must create the clock domain ``domain`` and drive it from ``user_clk`` /
    ``user_rst``::

        m.domains.link = ClockDomain("link")
        m.d.comb += [ClockSignal("link").eq(phy.user_clk), ResetSignal("link").eq(phy.user_rst)]

    In simulation (``platform`` is ``None``) it is a loopback model clocked by ``domain``:

    - ``channel_up`` rises ``model_startup`` cycles after reset (at once if 0) and stays high;
      ``soft_err`` and ``hard_err`` stay low; ``user_clk``/``user_rst`` mirror ``domain``'s clock
      and reset (so the top-level must not drive ``domain`` from them in simulation).
    - An owner and a sharer are the same model: sharing changes only the platform build.
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
        needed on a platform for an owner. A sharer's is its owner's (if given, it must be the
        same).
    owner : SerialLinkPHY, optional
        ``None``: this PHY owns its reference clock (its core has the shared logic). Otherwise
        the PHY, itself an owner, whose core's reference clock and quad PLL this lane shares;
        the caller makes sure both lanes are in one GT quad.
    core : str, optional
        Module name of the Aurora core (the Vivado component name); default
        ``"aurora_64b66b_0"`` for an owner and ``owner.core + "_shared"`` for a sharer.
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
    shared : bool
        The PHY shares its owner's reference clock (``owner`` is not ``None``).
    refclk_out, sync_clk, mmcm_not_locked, qpll_clk, qpll_refclk, qpll_lock, qpll_refclk_lost
        ``Signal``: an owner core's exports for its sharers (platform build only; a sharer's
        ``sync_clk`` and ``mmcm_not_locked`` are its owner's, the others are not driven).
    lane_up, qpll_reset : Signal
        The core's ``lane_up``; a sharer core's ``gt_to_common_qpllreset_out`` (platform build).
    """

    tx: In(stream.Signature(64))
    rx: Out(stream.Signature(64))
    channel_up: Out(1)
    soft_err: Out(1)
    hard_err: Out(1)
    user_clk: Out(1)
    user_rst: Out(1)

    #: Component name of an owner's core unless ``core`` says otherwise.
    CORE = "aurora_64b66b_0"

    def __init__(self, *, lane=None, refclk=None, owner=None, core=None, domain="sync",
                 init_domain="sync", model_latency=4, model_depth=16, model_startup=8):
        _check_resource("lane", lane)
        _check_resource("reference clock", refclk)
        if owner is not None:
            if not isinstance(owner, SerialLinkPHY) or owner.owner is not None:
                raise ValueError(f"SerialLinkPHY owner must be None or a SerialLinkPHY that owns "
                                 f"its reference clock, not {owner!r}")
            if refclk is None:
                refclk = owner.refclk
            elif refclk != owner.refclk:
                raise ValueError(f"SerialLinkPHY shares its owner's reference clock "
                                 f"{owner.refclk!r}, not {refclk!r}")
            if lane is not None and lane == owner.lane:
                raise ValueError(f"SerialLinkPHY lane {lane!r} is its owner's lane")
        if core is None:
            core = self.CORE if owner is None else f"{owner.core}_shared"
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
        self._owner = owner
        self._core = core
        self._domain = domain
        self._init_domain = init_domain
        self._model_latency = model_latency
        self._model_depth = model_depth
        self._model_startup = model_startup
        super().__init__()
        # Core ports not in the signature (platform build only).
        self.lane_up = Signal()
        self.refclk_out = Signal()
        self.sync_clk = Signal()
        self.mmcm_not_locked = Signal()
        self.qpll_clk = Signal()
        self.qpll_refclk = Signal()
        self.qpll_lock = Signal()
        self.qpll_refclk_lost = Signal()
        self.qpll_reset = Signal()

    lane = property(lambda self: self._lane)
    refclk = property(lambda self: self._refclk)
    owner = property(lambda self: self._owner)
    shared = property(lambda self: self._owner is not None)
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
        owner = self._owner
        # resources first: a ResourceError leaves no unused Module behind
        lane = platform.request(*self._lane, dir="-")
        refclk = platform.request(*self._refclk, dir="-") if owner is None else None
        m = Module()

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
        ports = dict(
            i_s_axi_tx_tdata=self.tx.payload,
            i_s_axi_tx_tvalid=self.tx.valid,
            o_s_axi_tx_tready=self.tx.ready,
            o_m_axi_rx_tdata=self.rx.payload,
            o_m_axi_rx_tvalid=self.rx.valid,
            i_rxp=lane.rx.p,
            i_rxn=lane.rx.n,
            o_txp=lane.tx.p,
            o_txn=lane.tx.n,
            i_init_clk=ClockSignal(self._init_domain),
            i_reset_pb=reset_pb,
            i_pma_init=pma_init,
            i_power_down=C(0, 1),
            i_loopback=C(0, 3),
            o_sys_reset_out=self.user_rst,
            o_channel_up=self.channel_up,
            o_lane_up=self.lane_up,
            o_hard_err=self.hard_err,
            o_soft_err=self.soft_err,
        )
        if owner is None:
            # shared logic in core: the reference clock buffer, the quad PLL and the clock module
            ports.update(
                i_gt_refclk1_p=refclk.p,
                i_gt_refclk1_n=refclk.n,
                o_gt_refclk1_out=self.refclk_out,
                o_user_clk_out=self.user_clk,
                o_sync_clk_out=self.sync_clk,
                o_mmcm_not_locked_out=self.mmcm_not_locked,
                o_gt_qpllclk_quad1_out=self.qpll_clk,
                o_gt_qpllrefclk_quad1_out=self.qpll_refclk,
                o_gt_qplllock_quad1_out=self.qpll_lock,
                o_gt_qpllrefclklost_quad1_out=self.qpll_refclk_lost,
            )
        else:
            # shared logic in example design: everything above comes from the owner's core
            m.d.comb += [self.user_clk.eq(owner.user_clk),
                         self.sync_clk.eq(owner.sync_clk),
                         self.mmcm_not_locked.eq(owner.mmcm_not_locked)]
            ports.update(
                i_refclk1_in=owner.refclk_out,
                i_user_clk=owner.user_clk,
                i_sync_clk=owner.sync_clk,
                i_mmcm_not_locked=owner.mmcm_not_locked,
                i_gt_qpllclk_quad1_in=owner.qpll_clk,
                i_gt_qpllrefclk_quad1_in=owner.qpll_refclk,
                i_gt_qplllock_quad1_in=owner.qpll_lock,
                i_gt_qpllrefclklost_quad1=owner.qpll_refclk_lost,
                o_gt_to_common_qpllreset_out=self.qpll_reset,
            )
        m.submodules.core = Instance(self._core, **ports)
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
