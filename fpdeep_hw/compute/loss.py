"""Loss unit: the last layer's scores and the label -> the error vector (``docs/training-spec.md``).

``softmax_cross_entropy`` follows the spec's integer algorithm step by step (maximum, ``log2 e``
multiply, the 256-entry ``2**(f/256)`` table in a ROM, shift, sum, a sequential divider for
``(e_i * 2**16 + S) // (2S)``); ``squared_error`` is ``requantize(z) - onehot``. No floating
point anywhere.

Golden model: :func:`sim.golden.layers.loss_error` (with ``EXP2_TABLE``, ``LOG2E_Q14``). Test:
``tests/hw/test_loss.py``.
"""

from __future__ import annotations

import math

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from fpdeep_map.numerics import FixedFormat, NumericsConfig

from ..memory.grad_buffer import _count_flags
from ..numerics import requantize, saturate

__all__ = ["LossUnit", "LOSSES", "LOG2E_Q14", "EXP2_TABLE", "U_FORMAT"]

LOSSES = ("softmax_cross_entropy", "squared_error")
#: ``round(log2(e) * 2**14)``.
LOG2E_Q14 = 23637
#: ``T[f] = round(2**(f/256) * 2**15)``, ``f = 0..255`` (15 fractional bits; 32768 .. 65359).
EXP2_TABLE = tuple(math.floor(2.0 ** (f / 256.0) * 2 ** 15 + 0.5) for f in range(256))
#: Format of ``u_i = d_i * log2 e`` (8 fractional bits, 16 bits).
U_FORMAT = FixedFormat(16, 8)
#: Quotient bits of ``p_i = (e_i * 2**16 + S) // (2S)`` (``p_i <= 2**15``).
_Q_BITS = 16


class _State(enum.Enum, shape=3):
    IDLE = 0
    MAX = 1
    EXP = 2
    DIV = 3
    OUT = 4


class LossUnit(wiring.Component):
    """Error vector of one image from its scores ``z`` and its label.

    ``softmax_cross_entropy`` (sequential, one class at a time):

    1. ``MAX`` (``classes`` cycles): ``m = max(z)``;
    2. ``EXP`` (``classes + 1`` cycles, two stages): ``u_i = requantize((z_i - m) * 23637,
       activation.frac + 14, Q8.8)`` (16 bits, half up; a clamp counts in ``overflow``),
       ``n_i = -(u_i >> 8)``, ``f_i = u_i mod 256``; the ROM (synchronous read) gives
       ``T[f_i]``, ``e_i = T[f_i] >> n_i`` (0 for ``n_i >= 16``); ``S += e_i``;
    3. ``DIV`` (``classes * (Q + 2)`` cycles, ``Q = 16`` quotient bits): per class a restoring
       divider, ``X = e_i * 2**16 + S``, for ``k = Q-1 .. 0``: ``X >= 2S << k`` -> subtract,
       quotient bit ``k``; then ``e_i = saturate(requantize(p_i, 15, error) - onehot_i *
       2**error.frac)`` (clamps counted);
    4. ``OUT``: the error word is offered on ``o``.

    ``squared_error``: ``e_i = saturate(requantize(z_i, activation.frac, error) - onehot_i *
    2**error.frac)`` for all lanes at once, offered on ``o`` the cycle after the inputs are taken.

    A new image is taken only after the previous error word has left (``IDLE``).

    Latency (:attr:`latency`, cycles from the transfer of ``z`` and ``label`` to ``o.valid``):
    softmax ``1 + classes + (classes + 1) + classes * (Q + 2)`` (``classes = 10``: 202),
    squared error 1.

    Parameters
    ----------
    numerics : NumericsConfig
        ``activation`` (scores) and ``error`` (output) formats.
    classes : int
        Number of classes (at least 2).
    kind : str
        ``"softmax_cross_entropy"`` or ``"squared_error"``.

    Members
    -------
    z : ``In(stream.Signature(ArrayLayout(signed(activation.width), classes)))``
        The last layer's output of one image (activation format, no ReLU).
    label : ``In(stream.Signature(range(classes)))``
        The image's class; taken together with ``z`` (both valid).
    o : ``Out(stream.Signature(ArrayLayout(signed(error.width), classes)))``
        The error vector (error format).
    overflow : ``Out(32)``
        Saturating count of clamped values (``u_i``, requantisations, the one-hot subtraction).
    """

    def __init__(self, *, numerics, classes, kind="softmax_cross_entropy"):
        if not isinstance(numerics, NumericsConfig):
            raise TypeError(f"LossUnit numerics must be a NumericsConfig, not {numerics!r}")
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 2:
            raise ValueError(f"LossUnit classes must be an integer >= 2, not {classes!r}")
        if kind not in LOSSES:
            raise ValueError(f"LossUnit kind must be one of {LOSSES}, not {kind!r}")
        self._numerics = numerics
        self._classes = classes
        self._kind = kind
        aw, ew = numerics.activation.width, numerics.error.width
        super().__init__({
            "z": In(stream.Signature(data.ArrayLayout(signed(aw), classes))),
            "label": In(stream.Signature(range(classes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(ew), classes))),
            "overflow": Out(32),
        })

    numerics = property(lambda self: self._numerics)
    classes = property(lambda self: self._classes)
    kind = property(lambda self: self._kind)

    @property
    def latency(self):
        c = self._classes
        if self._kind == "squared_error":
            return 1
        return 1 + c + (c + 1) + c * (_Q_BITS + 2)

    def elaborate(self, platform):
        m = Module()
        n = self._numerics
        C = self._classes
        act, err = n.activation, n.error
        one = 1 << err.frac

        z_reg = Signal(data.ArrayLayout(signed(act.width), C))
        lab = Signal(range(C))
        out = self.o.payload
        state = Signal(_State)
        take = Signal()
        m.d.comb += [
            self.z.ready.eq((state == _State.IDLE) & self.label.valid),
            self.label.ready.eq((state == _State.IDLE) & self.z.valid),
            take.eq(self.z.valid & self.label.valid & (state == _State.IDLE)),
            self.o.valid.eq(state == _State.OUT),
        ]

        def onehot_sub(value, cls):
            """``saturate(value - onehot_cls * 2**error.frac)``: (result, overflow)."""
            return saturate(value - Mux(cls == lab, one, 0), err.width)

        if self._kind == "squared_error":
            flags = Signal(2 * C)
            _count_flags(m, flags, self.overflow)
            for i in range(C):
                q, o1 = requantize(self.z.payload[i], act.frac, err)
                e, o2 = saturate(q - Mux(self.label.payload == i, one, 0), err.width)
                m.d.comb += [flags[2 * i].eq(take & o1), flags[2 * i + 1].eq(take & o2)]
                with m.If(take):
                    m.d.sync += out[i].eq(e)
            with m.If(take):
                m.d.sync += state.eq(_State.OUT)
            with m.If(self.o.valid & self.o.ready):
                m.d.sync += state.eq(_State.IDLE)
            return m

        flags = Signal(3)
        _count_flags(m, flags, self.overflow)
        i = Signal(range(C + 1))
        zi = Signal(signed(act.width))
        with m.Switch(i):
            for c in range(C):
                with (m.Case(c) if c < C - 1 else m.Default()):
                    m.d.comb += zi.eq(z_reg[c])
        mx = Signal(signed(act.width))

        # EXP: stage A (index i): u, ROM address, shift; stage B: e = T >> n, S += e
        rom = Memory(shape=unsigned(16), depth=256, init=EXP2_TABLE)
        m.submodules.exp2 = rom
        rp = rom.read_port()
        diff = Signal(signed(act.width + 1))
        m.d.comb += diff.eq(zi - mx)
        u, u_ovf = requantize(diff * LOG2E_Q14, act.frac + 14, U_FORMAT)
        u_sig = Signal(signed(16))
        m.d.comb += [u_sig.eq(u), rp.addr.eq(u_sig[:8]), rp.en.eq(1)]
        b_valid = Signal()
        b_idx = Signal(range(C))
        b_n = Signal(range(129))
        e_layout = data.ArrayLayout(unsigned(16), C)
        e_reg = Signal(e_layout)
        s_width = 16 + (C - 1).bit_length() + 1
        S = Signal(unsigned(s_width))
        e_new = Signal(unsigned(16))
        m.d.comb += e_new.eq(Mux(b_n >= 16, 0, rp.data >> b_n[:4]))

        # DIV: restoring division of X = e_j * 2**16 + S by D = 2S, quotient bits k = Q-1 .. 0
        x_width = 16 + 16 + 2 + (C - 1).bit_length()
        X = Signal(unsigned(x_width))
        q = Signal(unsigned(_Q_BITS + 1))
        k = Signal(range(_Q_BITS + 2))         # Q+1: load X; Q..1: bit k-1; 0: finish
        j = Signal(range(C))
        ej = Signal(unsigned(16))
        with m.Switch(j):
            for c in range(C):
                with (m.Case(c) if c < C - 1 else m.Default()):
                    m.d.comb += ej.eq(e_reg[c])
        kb = Signal(range(_Q_BITS))            # the quotient bit of this iteration
        shifted = Signal(unsigned(x_width + _Q_BITS))
        m.d.comb += [kb.eq(k - 1), shifted.eq((S << 1) << kb)]
        p_val, p_ovf = requantize(q, 15, err)
        res, res_ovf = onehot_sub(p_val, j)

        m.d.comb += flags.eq(0)
        with m.If(state == _State.IDLE):
            with m.If(take):
                m.d.sync += [z_reg.eq(self.z.payload), lab.eq(self.label.payload), i.eq(0),
                             mx.eq(Const(act.min_int, signed(act.width))),
                             state.eq(_State.MAX)]
        with m.Elif(state == _State.MAX):
            m.d.sync += [mx.eq(Mux(zi > mx, zi, mx)), i.eq(i + 1)]
            with m.If(i == C - 1):
                m.d.sync += [i.eq(0), S.eq(0), b_valid.eq(0), state.eq(_State.EXP)]
        with m.Elif(state == _State.EXP):
            m.d.sync += [b_valid.eq(i != C), b_idx.eq(i), b_n.eq(-(u_sig >> 8)), i.eq(i + 1)]
            m.d.comb += flags[0].eq((i != C) & u_ovf)
            with m.If(b_valid):
                m.d.sync += S.eq(S + e_new)
                with m.Switch(b_idx):
                    for c in range(C):
                        with (m.Case(c) if c < C - 1 else m.Default()):
                            m.d.sync += e_reg[c].eq(e_new)
            with m.If(i == C):
                m.d.sync += [j.eq(0), k.eq(_Q_BITS + 1), state.eq(_State.DIV)]
        with m.Elif(state == _State.DIV):
            with m.If(k == _Q_BITS + 1):
                m.d.sync += [X.eq((ej << 16) + S), q.eq(0), k.eq(_Q_BITS)]
            with m.Elif(k != 0):
                with m.If(X >= shifted):
                    m.d.sync += [X.eq(X - shifted), q.eq(q | (Const(1, _Q_BITS + 1) << kb))]
                m.d.sync += k.eq(k - 1)
            with m.Else():
                m.d.comb += [flags[1].eq(p_ovf), flags[2].eq(res_ovf)]
                with m.Switch(j):
                    for c in range(C):
                        with (m.Case(c) if c < C - 1 else m.Default()):
                            m.d.sync += out[c].eq(res)
                m.d.sync += [j.eq(j + 1), k.eq(_Q_BITS + 1)]
                with m.If(j == C - 1):
                    m.d.sync += state.eq(_State.OUT)
        with m.Elif(state == _State.OUT):
            with m.If(self.o.ready):
                m.d.sync += state.eq(_State.IDLE)
        return m
