"""Convolution engines: ``K x K`` tiles, engines of ``S`` tiles, arrays of ``P`` engines.

Golden model: :mod:`sim.golden.conv_engine`. Test: ``tests/hw/test_conv_engine.py``.
Dataflow, latencies and port contracts: ``docs/hw-compute.md``.

* :class:`ConvTile` -- ``K x K`` multipliers (16 x 16 bit by default) and a registered adder tree.
* :class:`ConvEngine` -- ``S`` tiles on ``S`` input channels, their sums added by a registered
  tree, accumulated over input-channel groups into a saturating ``acc_width``-bit accumulator.
* :class:`CEArray` -- ``P`` engines sharing one broadcast window; the stream block the node uses.
  FP shape (:meth:`CEArray.fp`): the window holds ``S`` activation channels, each of ``P`` engines
  computes one output channel. EB shape (:meth:`CEArray.eb`): the window holds the errors of
  ``P`` output channels, each of ``S`` engines (``P`` tiles) computes one input channel's error.
  The two are the same circuit with the roles of the two counts swapped.

Tiles and engines are clock-enabled pipelines (``en`` port, no handshake) -- the datapath of the
array, whose single stream control drives every ``en``. Datapath registers have no reset, so
synthesis can fold the input, product and first-adder registers into DSP48 slices.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring, stream, data
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from fpdeep_map.numerics import FixedFormat, NumericsConfig
from fpdeep_hw.compute.shared import shared
from fpdeep_hw.numerics import OverflowCounter, requantize, saturating_add

__all__ = ["ConvTile", "ConvEngine", "CEArray"]


def _check_count(what, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TypeError(f"{what} must be a positive integer, not {value!r}")


def _check_fmt(what, fmt):
    if not isinstance(fmt, FixedFormat):
        raise TypeError(f"{what} must be a FixedFormat, not {fmt!r}")


def _kernel(shape, k):
    return data.ArrayLayout(data.ArrayLayout(shape, k), k)


def _adder_tree(m, en, values, name):
    """Registered pairwise adder tree; returns ``(sum, levels)``. Registers load when ``en``."""
    level = 0
    while len(values) > 1:
        nxt = []
        for i in range(0, len(values), 2):
            expr = values[i] + values[i + 1] if i + 1 < len(values) else values[i]
            r = Signal(expr.shape(), name=f"{name}_l{level}_{i // 2}", reset_less=True)
            with m.If(en):
                m.d.sync += r.eq(expr)
            nxt.append(r)
        values = nxt
        level += 1
    return values[0], level


class ConvTile(wiring.Component):
    """``K x K`` multiply-accumulate: one window times one kernel per enabled cycle.

    Pipeline (every register loads when ``en`` is high, none has a reset): window and weights
    input registers, ``K*K`` product registers, then ``ceil(log2(K*K))`` registered adder levels.
    ``sum`` is the exact dot product (no rounding, no overflow possible) of the operands presented
    :attr:`latency` enabled cycles earlier.

    Parameters
    ----------
    k : int
    in_width, weight_width : int
        Signed operand widths (16 by default: one DSP48E1 multiplier each).

    Members
    -------
    en : ``In(1)``
    window : ``In(ArrayLayout(ArrayLayout(signed(in_width), k), k))``
    weights : ``In(ArrayLayout(ArrayLayout(signed(weight_width), k), k))``
    sum : ``Out(signed(in_width + weight_width + ceil_log2(k*k)))``
    """

    def __init__(self, *, k, in_width=16, weight_width=16):
        _check_count("Kernel size", k)
        _check_count("Input width", in_width)
        _check_count("Weight width", weight_width)
        self._k, self._in_width, self._weight_width = k, in_width, weight_width
        self._levels = ceil_log2(k * k)
        super().__init__({
            "en": In(1),
            "window": In(_kernel(signed(in_width), k)),
            "weights": In(_kernel(signed(weight_width), k)),
            "sum": Out(signed(in_width + weight_width + self._levels)),
        })

    k = property(lambda self: self._k)
    #: Enabled cycles from operands to ``sum``: input, product and adder-tree registers.
    latency = property(lambda self: 2 + self._levels)

    def elaborate(self, platform):
        m = Module()
        k = self._k
        a = Signal(_kernel(signed(self._in_width), k), name="a_reg", reset_less=True)
        b = Signal(_kernel(signed(self._weight_width), k), name="b_reg", reset_less=True)
        with m.If(self.en):
            m.d.sync += [a.eq(self.window), b.eq(self.weights)]
        products = []
        for ky in range(k):
            for kx in range(k):
                p = Signal(signed(self._in_width + self._weight_width), name=f"m_{ky}_{kx}",
                           reset_less=True)
                with m.If(self.en):
                    m.d.sync += p.eq(a[ky][kx] * b[ky][kx])
                products.append(p)
        total, levels = _adder_tree(m, self.en, products, "t")
        assert levels == self._levels
        m.d.comb += self.sum.eq(total)
        return m


class ConvEngine(wiring.Component):
    """``S`` convolution tiles summed and accumulated: one output channel's partial per cycle.

    An enabled cycle with ``valid`` high presents one step: ``S`` window channels and ``S``
    kernels. Its partial ``sum over tiles`` reaches the accumulator after the tiles' and the
    engine adder tree's registers; the accumulator then becomes ``partial`` (first step after a
    ``last``, or after reset) or ``saturate(acc + partial, acc_width)``. When the step carried
    ``last`` the accumulation is complete: ``done`` is high (until the next enabled cycle) and
    ``acc`` holds the result, :attr:`latency` enabled cycles after the step was presented.
    ``overflow`` is high in a cycle whose (enabled) accumulator update saturates.

    Parameters
    ----------
    k : int
    tiles : int
        ``S``.
    in_width, weight_width : int
    acc_width : int

    Members
    -------
    en, valid, last : ``In(1)``
    window : ``In(ArrayLayout(kernel(signed(in_width)), tiles))``
    weights : ``In(ArrayLayout(kernel(signed(weight_width)), tiles))``
    acc : ``Out(signed(acc_width))``
    done, overflow : ``Out(1)``
    """

    def __init__(self, *, k, tiles, in_width=16, weight_width=16, acc_width=48):
        _check_count("Kernel size", k)
        _check_count("Tile count", tiles)
        _check_count("Accumulator width", acc_width)
        self._k, self._tiles, self._acc_width = k, tiles, acc_width
        self._in_width, self._weight_width = in_width, weight_width
        self._tile_latency = 2 + ceil_log2(k * k)
        self._levels = ceil_log2(tiles)
        super().__init__({
            "en": In(1),
            "valid": In(1),
            "last": In(1),
            "window": In(data.ArrayLayout(_kernel(signed(in_width), k), tiles)),
            "weights": In(data.ArrayLayout(_kernel(signed(weight_width), k), tiles)),
            "acc": Out(signed(acc_width)),
            "done": Out(1),
            "overflow": Out(1),
        })

    k = property(lambda self: self._k)
    tiles = property(lambda self: self._tiles)
    acc_width = property(lambda self: self._acc_width)
    #: Enabled cycles from a step to ``acc``/``done``: tiles, engine tree, accumulator.
    latency = property(lambda self: self._tile_latency + self._levels + 1)

    def elaborate(self, platform):
        m = Module()
        sums = []
        for t in range(self._tiles):
            tile = ConvTile(k=self._k, in_width=self._in_width, weight_width=self._weight_width)
            m.submodules[f"tile{t}"] = tile
            m.d.comb += [
                tile.en.eq(self.en),
                tile.window.eq(self.window[t]),
                tile.weights.eq(self.weights[t]),
            ]
            sums.append(tile.sum)
        partial, levels = _adder_tree(m, self.en, sums, "e")
        assert levels == self._levels

        # control bits travel beside the data, through the same number of enabled registers
        depth = self._tile_latency + self._levels
        valid = [Signal(name=f"valid_{i}") for i in range(depth)]
        last = [Signal(name=f"last_{i}", reset_less=True) for i in range(depth)]
        with m.If(self.en):
            m.d.sync += [valid[0].eq(self.valid), last[0].eq(self.last)]
            for i in range(1, depth):
                m.d.sync += [valid[i].eq(valid[i - 1]), last[i].eq(last[i - 1])]
        step_valid, step_last = valid[-1], last[-1]

        fresh = Signal(init=1)          # the next step starts a new accumulation
        acc = Signal(signed(self._acc_width), reset_less=True)
        base = Signal(signed(self._acc_width))
        m.d.comb += base.eq(acc)
        with m.If(fresh):
            m.d.comb += base.eq(0)
        new, ovf = saturating_add(base, partial, self._acc_width)
        with m.If(self.en):
            m.d.sync += self.done.eq(step_valid & step_last)
            with m.If(step_valid):
                m.d.sync += [acc.eq(new), fresh.eq(step_last)]
        m.d.comb += [
            self.acc.eq(acc),
            self.overflow.eq(self.en & step_valid & ovf),
        ]
        return m


class CEArray(wiring.Component):
    """``engines`` convolution engines of ``tiles`` tiles sharing one broadcast window (streams).

    Each transfer joins one window word (``win``) with one weight word (``wt``); both streams
    must be valid, they are taken in the same cycle. Engine ``e`` multiplies the window with
    ``wt.weights[e]`` and accumulates; the word whose ``wt.last`` is set completes the
    accumulation and one output word leaves on ``o`` (one value per engine),
    :attr:`latency` cycles after that transfer when ``o`` is not stalled. Words without ``last``
    produce nothing on ``o``.

    Unused lanes (a channel count not divisible by ``tiles``/``engines``) are masked by zero
    weights: whatever the window lanes hold, a zero weight contributes nothing, and an engine
    with zero weights produces an output that the consumer ignores.

    Output values are the raw accumulators (``out_fmt=None``: ``signed(acc_width)`` with
    ``in_fmt.frac + weight_fmt.frac`` fractional bits) or requantised to ``out_fmt``
    (:func:`fpdeep_hw.numerics.requantize`: rounding per ``out_fmt.rounding``, saturation).
    ``acc_overflows`` counts saturating accumulator steps (one per engine and step),
    ``out_overflows`` clamped output values; both are saturating 32-bit counters cleared by
    ``clear_overflows``.

    Parameters
    ----------
    k : int
    tiles : int
        Channels of the broadcast window (tiles per engine): ``S`` in FP, ``P`` in EB.
    engines : int
        Engines (output lanes): ``P`` in FP, ``S`` in EB.
    in_fmt, weight_fmt : FixedFormat
    out_fmt : FixedFormat or None
    acc_width : int

    Members
    -------
    win : ``In(stream.Signature(ArrayLayout(kernel(signed(in_fmt.width)), tiles)))``
        Windows ``win.payload[t][ky][kx]`` (the line buffer's output layout).
    wt : ``In(stream.Signature(StructLayout({"weights": ..., "last": 1})))``
        ``wt.payload.weights[e][t][ky][kx]`` and the end-of-accumulation flag.
    o : ``Out(stream.Signature(ArrayLayout(out_shape, engines)))``
    acc_overflows, out_overflows : ``Out(32)``
    clear_overflows : ``In(1)``
    """

    def __init__(self, *, k, tiles, engines, in_fmt=FixedFormat(16, 8),
                 weight_fmt=FixedFormat(16, 12), out_fmt=None, acc_width=48, src_loc_at=0):
        _check_count("Kernel size", k)
        _check_count("Tile count", tiles)
        _check_count("Engine count", engines)
        _check_fmt("Input format", in_fmt)
        _check_fmt("Weight format", weight_fmt)
        if out_fmt is not None:
            _check_fmt("Output format", out_fmt)
        _check_count("Accumulator width", acc_width)
        self._k, self._tiles, self._engines = k, tiles, engines
        self._in_fmt, self._weight_fmt, self._out_fmt = in_fmt, weight_fmt, out_fmt
        self._acc_width = acc_width
        self._engine_latency = 2 + ceil_log2(k * k) + ceil_log2(tiles) + 1
        out_shape = signed(acc_width) if out_fmt is None else signed(out_fmt.width)
        self._out_shape = out_shape
        wt_layout = data.StructLayout({
            "weights": data.ArrayLayout(
                data.ArrayLayout(_kernel(signed(weight_fmt.width), k), tiles), engines),
            "last": 1,
        })
        super().__init__({
            "win": In(stream.Signature(data.ArrayLayout(_kernel(signed(in_fmt.width), k), tiles))),
            "wt": In(stream.Signature(wt_layout)),
            "o": Out(stream.Signature(data.ArrayLayout(out_shape, engines))),
            "acc_overflows": Out(32),
            "out_overflows": Out(32),
            "clear_overflows": In(1),
        }, src_loc_at=1 + src_loc_at)

    @classmethod
    def fp(cls, *, k, s, p, numerics=NumericsConfig(), out_fmt="partial"):
        """FP shape: a window of ``s`` activation channels, ``p`` engines (output channels).

        ``out_fmt``: ``"partial"`` (default; the ICP partial-sum format handed to the
        partial-activation adder), ``"activation"``, a :class:`FixedFormat`, or ``None`` (raw).
        """
        if isinstance(out_fmt, str):
            out_fmt = getattr(numerics, out_fmt)
        return cls(k=k, tiles=s, engines=p, in_fmt=numerics.activation,
                   weight_fmt=numerics.weight, out_fmt=out_fmt, acc_width=numerics.acc_width,
                   src_loc_at=1)

    @classmethod
    def eb(cls, *, k, s, p, numerics=NumericsConfig(), out_fmt="error"):
        """EB shape: a window of ``p`` output-channel errors, ``s`` engines (input channels).

        Feed it the flipped windows of :meth:`LineBuffer.transposed` and the unflipped kernels
        ``W[oc][ic]`` (engine ``s`` gets ``W[oc][s]`` for the ``p`` output channels of the word).
        """
        if isinstance(out_fmt, str):
            out_fmt = getattr(numerics, out_fmt)
        return cls(k=k, tiles=p, engines=s, in_fmt=numerics.error,
                   weight_fmt=numerics.weight, out_fmt=out_fmt, acc_width=numerics.acc_width,
                   src_loc_at=1)

    k = property(lambda self: self._k)
    tiles = property(lambda self: self._tiles)
    engines = property(lambda self: self._engines)
    in_fmt = property(lambda self: self._in_fmt)
    weight_fmt = property(lambda self: self._weight_fmt)
    out_fmt = property(lambda self: self._out_fmt)
    acc_width = property(lambda self: self._acc_width)
    #: Fractional bits of the accumulator.
    acc_frac = property(lambda self: self._in_fmt.frac + self._weight_fmt.frac)
    #: Cycles from the transfer of a ``last`` word to its output word on ``o`` (no stalls).
    latency = property(lambda self: self._engine_latency + 1)

    def elaborate(self, platform):
        m = Module()
        advance = ~self.o.valid | self.o.ready
        both = self.win.valid & self.wt.valid
        m.d.comb += [
            self.win.ready.eq(advance & self.wt.valid),
            self.wt.ready.eq(advance & self.win.valid),
        ]
        engines = []
        for e in range(self._engines):
            eng = ConvEngine(k=self._k, tiles=self._tiles, in_width=self._in_fmt.width,
                             weight_width=self._weight_fmt.width, acc_width=self._acc_width)
            # identical engines: converted once by the build (fpdeep_hw.compute.shared)
            m.submodules[f"engine{e}"] = shared(eng, (self._k, self._tiles, self._in_fmt.width,
                                                      self._weight_fmt.width, self._acc_width))
            m.d.comb += [
                eng.en.eq(advance),
                eng.valid.eq(both),
                eng.last.eq(self.wt.payload.last),
                eng.window.eq(self.win.payload),
                eng.weights.eq(self.wt.payload.weights[e]),
            ]
            engines.append(eng)

        m.submodules.acc_counter = acc_counter = OverflowCounter(inputs=self._engines)
        m.submodules.out_counter = out_counter = OverflowCounter(inputs=self._engines)
        m.d.comb += [
            acc_counter.clear.eq(self.clear_overflows),
            out_counter.clear.eq(self.clear_overflows),
            self.acc_overflows.eq(acc_counter.count),
            self.out_overflows.eq(out_counter.count),
        ]
        done = engines[0].done          # all engines run in lockstep
        load = advance & done
        with m.If(advance):
            m.d.sync += self.o.valid.eq(done)
        for e, eng in enumerate(engines):
            m.d.comb += acc_counter.inc[e].eq(eng.overflow)
            if self._out_fmt is None:
                value, ovf = eng.acc, 0
            else:
                value, ovf = requantize(eng.acc, self.acc_frac, self._out_fmt)
            out = Signal(self._out_shape, name=f"out_{e}", reset_less=True)
            with m.If(load):
                m.d.sync += out.eq(value)
            m.d.comb += [
                self.o.payload[e].eq(out),
                out_counter.inc[e].eq(load & ovf),
            ]
        return m
