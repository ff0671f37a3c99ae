"""Weight-version gate of one layer (``docs/training-spec.md``, "Which weights an image uses").

The gate counts the images a layer's FP, EB and PG have started and finished and decides, from
those counts alone, when FP and EB may start their next image and when the weight update of a
mini-batch may be written. Because it only counts events, its decisions do not depend on stalls
or link timing: whatever the timing, FP of image ``i`` runs on weight version
``max(0, (i - D) // B)`` and EB of image ``i`` on version ``i // B``.

Golden model: :class:`VersionGateModel` in this module's test, ``tests/hw/test_version_gate.py``
(a cycle model of the rule, compared with the RTL every cycle under random strobe timing).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["VersionGate"]


class VersionGate(wiring.Component):
    """Per-layer gate enforcing the weight-version rule with batch ``B`` and lag ``D``.

    With ``U`` updates finished (``update_done`` pulses seen):

    - ``fp_go``: FP may start its next image ``j`` (the number of ``fp_start`` pulses so far)
      iff ``j < (U + 1) * B + D``;
    - ``eb_go``: EB may start its next image ``j`` (``eb_start`` pulses so far) iff
      ``j < (U + 1) * B``;
    - ``update_start`` (one-cycle pulse): update ``M = U`` may be written once PG has finished
      ``(M + 1) * B`` images (``pg_done`` pulses), FP has finished ``(M + 1) * B + D`` images
      (``fp_done`` pulses) and, when the layer has an EB (``eb=True``), EB has finished
      ``(M + 1) * B`` images (``eb_done`` pulses) -- so no EB still reads version ``M`` while it
      is overwritten. It pulses once per update; the next one can only pulse after
      ``update_done``.

    So update ``M`` comes after FP of image ``(M+1)B + D - 1`` and PG (and EB) of image
    ``(M+1)B - 1``, and FP of image ``(M+1)B + D`` and EB of image ``(M+1)B`` wait for its
    ``update_done``: the spec's rule.

    Timing: the outputs are functions of registers only (no combinational path from any input).
    A strobe in cycle ``t`` is counted at the edge ending ``t``; its effect on ``fp_go``,
    ``eb_go``, ``update_start`` shows from cycle ``t + 1`` (``LATENCY = 1``). ``fp_go``/``eb_go``
    hold in the cycle the corresponding ``*_start`` strobe is raised; a start strobe while the
    matching go is low is a protocol error of the caller (not checked). Strobes of different
    kinds may come in the same cycle.

    Storage: the counters hold differences to the current mini-batch boundary, so they stay
    bounded for any number of images: starts still allowed (``0 .. B + D`` for FP, ``0 .. 2B``
    for EB when EB does not run ahead of PG by more than a batch), and completions still missing
    before the next update, as signed counters of ``count_width`` bits.

    Parameters
    ----------
    batch : int
        Mini-batch size ``B`` (at least 1).
    lag : int
        ``D_l`` of the layer (``floor(act_ram_images)`` of its plan segment), at least 0.
    eb : bool
        The layer has an EB (every layer but the first). Without it, ``eb_done`` is ignored
        (``eb_start``/``eb_go`` still follow the rule; tie ``eb_start`` to 0).
    count_width : int
        Width of the signed counters (default 32).

    Members
    -------
    fp_start, fp_done, eb_start, eb_done, pg_done : ``In(1)``
        One-cycle strobes, one per image (several kinds may pulse in one cycle).
    update_done : ``In(1)``
        One-cycle strobe: the update started by the last ``update_start`` has been written.
    fp_go, eb_go : ``Out(1)``
        FP / EB may start its next image.
    flush : ``In(1)``
        Level: the run has ended (no FP image will follow), so the FP condition of the update is
        waived and the last mini-batch's update is written once its PG (and EB) are done.
        Without it, the final update would wait for FP of ``D`` images that never come.
    update_start : ``Out(1)``
        One-cycle pulse: write the update of mini-batch ``updates``.
    updates : ``Out(count_width)``
        Updates finished so far (wraps after ``2**count_width``; for observation).
    busy : ``Out(1)``
        An update has started and not finished.
    """

    LATENCY = 1

    def __init__(self, *, batch, lag, eb=True, count_width=32):
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ValueError(f"VersionGate batch must be a positive integer, not {batch!r}")
        if not isinstance(lag, int) or isinstance(lag, bool) or lag < 0:
            raise ValueError(f"VersionGate lag must be a non-negative integer, not {lag!r}")
        if not isinstance(eb, bool):
            raise TypeError(f"VersionGate eb must be a bool, not {eb!r}")
        if (not isinstance(count_width, int) or isinstance(count_width, bool)
                or not (2 * batch + lag + 1).bit_length() + 1 <= count_width <= 64):
            raise ValueError(f"VersionGate counter width must be an integer in "
                             f"{(2 * batch + lag + 1).bit_length() + 1}..64, not {count_width!r}")
        self._batch = batch
        self._lag = lag
        self._eb = eb
        self._count_width = count_width
        super().__init__({
            "fp_start": In(1), "fp_done": In(1), "eb_start": In(1), "eb_done": In(1),
            "pg_done": In(1), "update_done": In(1), "flush": In(1),
            "fp_go": Out(1), "eb_go": Out(1), "update_start": Out(1),
            "updates": Out(count_width), "busy": Out(1),
        })

    @property
    def batch(self):
        return self._batch

    @property
    def lag(self):
        return self._lag

    @property
    def eb(self):
        return self._eb

    @property
    def count_width(self):
        return self._count_width

    @property
    def latency(self):
        return self.LATENCY

    def elaborate(self, platform):
        m = Module()
        B, D, w = self._batch, self._lag, self._count_width
        # starts still allowed before the next update has to be finished
        fp_allowed = Signal(signed(w), init=B + D)
        eb_allowed = Signal(signed(w), init=B)
        # completions still missing before the next update may start (<= 0: condition met)
        fp_left = Signal(signed(w), init=B + D)
        pg_left = Signal(signed(w), init=B)
        eb_left = Signal(signed(w), init=B)
        busy = Signal()
        flush = Signal()
        m.d.sync += flush.eq(self.flush)
        ready = ((fp_left <= 0) | flush) & (pg_left <= 0)
        if self._eb:
            ready = ready & (eb_left <= 0)
        m.d.comb += [
            self.fp_go.eq(fp_allowed > 0),
            self.eb_go.eq(eb_allowed > 0),
            self.update_start.eq(~busy & ready),
            self.busy.eq(busy),
        ]
        up, st = self.update_done, self.update_start

        def step(reg, dec, add_on):
            m.d.sync += reg.eq(reg - dec + Mux(add_on, B, 0))

        step(fp_allowed, self.fp_start, up)
        step(eb_allowed, self.eb_start, up)
        step(fp_left, self.fp_done, st)
        step(pg_left, self.pg_done, st)
        if self._eb:
            step(eb_left, self.eb_done, st)
        with m.If(st):
            m.d.sync += busy.eq(1)
        with m.Elif(up):
            m.d.sync += [busy.eq(0), self.updates.eq(self.updates + 1)]
        return m
