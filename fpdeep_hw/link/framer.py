"""Serial link framer: typed streams multiplexed onto one 64-bit link direction, with CRC and credits.

``LinkTx`` cuts the words of N typed streams (activations, partial sums, errors, partial errors,
parameters, gradients: ``docs/mapping.md`` section 5) into frames on one 64-bit stream to the
PHY (:class:`fpdeep_hw.link.transceiver.SerialLinkPHY` ``tx``); ``LinkRx`` checks the frames
coming out of the PHY's ``rx`` and sorts good payload words back into per-stream receive
buffers. Credits returned by the receiver keep the transmitter from sending more words of a
stream than the receiver's buffer has room for.

Golden model: :mod:`sim.golden.framer` (frame format, CRCs, receiver).
Test: ``tests/hw/test_framer.py`` (with the link model ``sim/link_model.py``).
Documentation: ``docs/hw-link.md``.

Frame format (64-bit words, bit 63 first on the wire)::

    header   [63:56] SYNC 0xD5  [55:48] sid  [47:40] length  [39:32] kind (0)
             [31:16] seq (stream words sent before this frame, mod 2**16)
             [15:0]  CRC-16/CCITT-FALSE of bits 63..16
    payload  length words, 1 <= length <= max_payload
    trailer  [63:32] 0x7E7E7E7E  [31:0] CRC-32C (Castagnoli) of header and payload

    credit frame (kind 1, optional): header with sid 0, seq 0, length ceil(n/4); payload:
             cumulative words freed (mod 2**16) per stream of the opposite direction,
             16 bits each, 4 per word (stream 4j+i in bits [16i+15:16i] of word j); trailer

Both CRCs are computed one 64-bit word per cycle by XOR matrices derived at elaboration from
their bit-serial definitions (the golden model uses byte-wise tables: they check each other).

Credits can come back on a separate stream (``LinkRx.credit_o`` -> ``LinkTx.credit_i``, e.g.
through a second link model in simulation), or, on hardware, in credit frames of the opposite
direction: give both framers of a direction ``reverse=`` (the streams of the opposite
direction) and connect, in each node, ``LinkRx.credit_o`` (credits for the far transmitter) to
the local ``LinkTx.credit_send`` and ``LinkRx.credit_recv`` (credits from the far receiver) to
the local ``LinkTx.credit_i``.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["PATHS", "LinkStream", "credit_layout", "LinkTx", "LinkRx", "frame_latency",
           "SYNC", "TRAILER_MARK"]

#: Stream types a plan puts on a link (``docs/mapping.md`` section 5).
PATHS = ("activations", "partial_sums", "errors", "partial_errors", "parameters", "gradients")
SYNC = 0xD5
TRAILER_MARK = 0x7E7E7E7E
_CRC32C_REFLECTED = 0x82F63B78      # 0x1EDC6F41 bit-reversed
_CRC16_POLY = 0x1021


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class LinkStream:
    """One typed stream carried by a link direction.

    Parameters
    ----------
    sid : int
        Stream id in the frame header, 0..255, unique on the link.
    path : str
        Stream type, one of :data:`PATHS` (documentation and plan mapping; not on the wire).
    width : int
        Payload width in bits, 1..64, for one-word items (zero-extended to 64 on the wire).
    words : int
        64-bit words per item (at least 1); items of more than one word need ``width == 64``
        and are ``data.ArrayLayout(64, words)`` (element 0 sent first).
    depth : int
        Receive buffer depth in words, 1..65535 (credit totals travel modulo 2**16): the
        transmitter's initial credit.
    """

    sid: int
    path: str = "activations"
    width: int = 64
    words: int = 1
    depth: int = 32

    def __post_init__(self):
        if not _is_int(self.sid) or not 0 <= self.sid <= 255:
            raise ValueError(f"Link stream id must be an integer in 0..255, not {self.sid!r}")
        if self.path not in PATHS:
            raise ValueError(f"Link stream path must be one of {', '.join(PATHS)}, "
                             f"not {self.path!r}")
        if not _is_int(self.width) or not 1 <= self.width <= 64:
            raise ValueError(f"Link stream width must be an integer in 1..64, not {self.width!r}")
        if not _is_int(self.words) or self.words < 1:
            raise ValueError(f"Link stream words per item must be a positive integer, "
                             f"not {self.words!r}")
        if self.words > 1 and self.width != 64:
            raise ValueError("Link stream items of several words must have width 64, "
                             f"not {self.width!r}")
        if not _is_int(self.depth) or not 1 <= self.depth <= 65535:
            raise ValueError(f"Link stream depth must be an integer in 1..65535, "
                             f"not {self.depth!r}")

    @property
    def shape(self):
        """Payload shape of the stream's items."""
        if self.words == 1:
            return unsigned(self.width)
        return data.ArrayLayout(64, self.words)


def _check_streams(who, streams):
    streams = list(streams) if isinstance(streams, (list, tuple)) else streams
    if not isinstance(streams, list) or not streams or \
            not all(isinstance(s, LinkStream) for s in streams):
        raise TypeError(f"{who} streams must be a non-empty list of LinkStream, not {streams!r}")
    sids = [s.sid for s in streams]
    if len(set(sids)) != len(sids):
        raise ValueError(f"{who} stream ids must be unique, not {sids!r}")
    return tuple(streams)


def _check_max_payload(who, max_payload):
    if not _is_int(max_payload) or not 1 <= max_payload <= 255:
        raise ValueError(f"{who} max_payload must be an integer in 1..255, not {max_payload!r}")


def credit_layout(streams):
    """Payload of the credit stream: words freed per stream (one field per stream, in order)."""
    width = max(s.depth for s in streams).bit_length()
    return data.ArrayLayout(width, len(streams))


def frame_latency(link_latency, tx_latency=2, rx_latency=2):
    """Cycles from a lone word entering an idle ``LinkTx`` to it leaving ``LinkRx``.

    The word enters at cycle ``t``; the header leaves ``LinkTx`` at ``t + 2``, the payload at
    ``t + 3``, the trailer at ``t + 4``; the trailer reaches ``LinkRx`` ``link_latency`` cycles
    later and the word is on the receiver's output ``LinkRx.LATENCY`` cycles after that.
    """
    return tx_latency + 2 + link_latency + rx_latency


# --- CRCs as XOR matrices -----------------------------------------------------------------------

def _crc32c_word_serial(state, word):
    """Bit-serial CRC-32C register update by one 64-bit word (bytes big-endian, bits LSB first)."""
    for byte_index in range(7, -1, -1):
        byte = (word >> (8 * byte_index)) & 0xFF
        for bit in range(8):
            fb = (state ^ (byte >> bit)) & 1
            state = (state >> 1) ^ (_CRC32C_REFLECTED if fb else 0)
    return state


def _crc16_serial(top48):
    """Bit-serial CRC-16/CCITT-FALSE of 6 bytes (bits 47..0, MSB first), init 0xFFFF."""
    state = 0xFFFF
    for bit in range(47, -1, -1):
        fb = ((state >> 15) ^ (top48 >> bit)) & 1
        state = ((state << 1) & 0xFFFF) ^ (_CRC16_POLY if fb else 0)
    return state


def _xor_matrix(fn, in_bits, out_bits):
    """``(rows, const)`` of the affine map ``fn``: output bit ``i`` = XOR of inputs ``rows[i]``."""
    const = fn(0)
    cols = [fn(1 << j) ^ const for j in range(in_bits)]
    rows = [[j for j in range(in_bits) if (cols[j] >> i) & 1] for i in range(out_bits)]
    return rows, const


_CRC32_ROWS, _ = _xor_matrix(lambda v: _crc32c_word_serial(v & 0xFFFFFFFF, v >> 32), 96, 32)
_CRC16_ROWS, _CRC16_CONST = _xor_matrix(_crc16_serial, 48, 16)


def _pick(idx, values):
    """``values[idx]`` as a Mux chain (no Verilog ``case`` with unreachable patterns)."""
    out = values[0]
    for k in range(1, len(values)):
        out = Mux(idx == k, values[k], out)
    return out


def _apply(rows, const, bits):
    out = []
    for i, row in enumerate(rows):
        mask = sum(1 << j for j in row)
        v = (bits & Const(mask, len(bits))).xor()
        out.append(~v if (const >> i) & 1 else v)
    return Cat(*out)


def crc32c_next(state, word):
    """Next raw CRC-32C register after ``word`` (an Amaranth expression, 32 bits)."""
    return _apply(_CRC32_ROWS, 0, Cat(state, word))


def crc16_header(top48):
    """CRC-16/CCITT-FALSE of the header's upper 48 bits (an Amaranth expression, 16 bits)."""
    return _apply(_CRC16_ROWS, _CRC16_CONST, top48)


# --- Transmitter --------------------------------------------------------------------------------

class LinkTx(wiring.Component):
    """Frame N typed streams onto one 64-bit word stream, round-robin, limited by credits.

    Gathering and sending overlap through ``banks`` staging banks of ``max_payload`` words
    (one ``Memory`` with a synchronous read port), used in turn: while one bank is sent, the
    others are filled. Three banks (the default) keep a saturated link busy when streams of
    different pace share it: a short frame of a slow stream is on the wire for a few cycles
    only, and with two banks the next long frame could only start gathering (one word per
    cycle) once that short frame's bank was free, leaving the link idle for most of the long
    frame's gathering (two streams, one of short frames, one backlogged: the backlogged one
    got half the link). With three, the gatherer works up to two frames ahead of the sender.

    - **Arbitration.** When the gathering bank is free, the next stream in round-robin order
      after the last one served that has a word on its input *and* at least one credit is chosen,
      and its first word is taken in the same cycle. A stream waiting with data and credit is thus
      served after at most ``n - 1`` other frames.
    - **Frame length.** Words of the chosen stream are taken one per cycle until ``max_payload``
      words, until its credit is used up, or until its input has no word in a cycle (the frame is
      cut short there: the header's length is the number of words gathered).
    - **Sending.** A full bank goes out as header, payload, trailer, one word per cycle while
      ``o.ready``; the CRC-32C is accumulated as words leave. ``seq`` counts the stream's words
      sent before the frame.
    - **Credits.** Each stream starts with ``depth`` credits (its receive buffer), loses one per
      word taken and regains what ``credit_i`` returns. ``credit_i`` is always ready.
    - **Credit frames** (with ``reverse``): words freed by the local receiver of the opposite
      direction arrive on ``credit_send`` (always ready) and are added to cumulative totals.
      When the totals changed since the last credit frame, at least ``credit_interval`` cycles
      have passed since it (with ``credit_urgent``: or some stream has at least half its
      ``depth`` freed and not yet reported, so that a busy stream never waits out the interval
      with its transmitter out of credit), and either no data frame is ready or the last frame
      sent was a data
      frame, a credit frame with the totals is sent next (data and credit frames alternate under
      load; a header offered and not yet taken is never changed).

    Timing: a lone word taken from an idle transmitter at cycle ``t`` gives the header on ``o``
    at ``t + LATENCY`` (2), its payload at ``t + 3`` and the trailer at ``t + 4``. With all
    inputs saturated and credit available, ``o`` carries a word every cycle.

    Parameters
    ----------
    streams : list of LinkStream
        The streams carried, in input order.
    max_payload : int
        Maximum payload words per frame, 1..255.
    reverse : list of LinkStream, optional
        Streams of the opposite direction, whose credits this transmitter sends in credit
        frames (adds ``credit_send``).
    credit_interval : int
        Minimum cycles between the starts of two credit frames (0: no minimum).
    credit_urgent : bool
        Also send a credit frame before the interval has passed once a stream of the opposite
        direction has half its receive buffer freed and unreported (default ``False``).
    banks : int
        Staging banks of ``max_payload`` words, 2..4 (default 3, see above).

    Members
    -------
    i0, i1, ... : ``In(stream.Signature(streams[k].shape))``
        Input stream of each carried stream (also as the list :attr:`inputs`).
    o : ``Out(stream.Signature(64))``
        Frame words to the PHY (or link model).
    credit_i : ``In(stream.Signature(credit_layout(streams)))``
        Credits returned by the receiver: words freed per stream.
    credit_send : ``In(stream.Signature(credit_layout(reverse)))``
        Only with ``reverse``: credits of the local receiver of the opposite direction, to send.
    """

    LATENCY = 2

    def __init__(self, streams, *, max_payload=32, reverse=None, credit_interval=0,
                 credit_urgent=False, banks=3):
        self._streams = _check_streams("LinkTx", streams)
        if not _is_int(banks) or not 2 <= banks <= 4:
            raise ValueError(f"LinkTx banks must be an integer in 2..4, not {banks!r}")
        self._banks = banks
        _check_max_payload("LinkTx", max_payload)
        self._reverse = None if reverse is None else _check_streams("LinkTx reverse", reverse)
        if not _is_int(credit_interval) or credit_interval < 0:
            raise ValueError(f"LinkTx credit_interval must be a non-negative integer, "
                             f"not {credit_interval!r}")
        self._max_payload = max_payload
        self._credit_interval = credit_interval
        if not isinstance(credit_urgent, bool):
            raise TypeError(f"LinkTx credit_urgent must be a bool, not {credit_urgent!r}")
        self._credit_urgent = credit_urgent
        members = {f"i{k}": In(stream.Signature(s.shape)) for k, s in enumerate(self._streams)}
        members["o"] = Out(stream.Signature(64))
        members["credit_i"] = In(stream.Signature(credit_layout(self._streams)))
        if self._reverse is not None:
            members["credit_send"] = In(stream.Signature(credit_layout(self._reverse)))
        super().__init__(members)

    streams = property(lambda self: self._streams)
    max_payload = property(lambda self: self._max_payload)
    reverse = property(lambda self: self._reverse)
    credit_interval = property(lambda self: self._credit_interval)
    banks = property(lambda self: self._banks)

    @property
    def inputs(self):
        return [getattr(self, f"i{k}") for k in range(len(self._streams))]

    def elaborate(self, platform):
        m = Module()
        streams = self._streams
        n = len(streams)
        P = self._max_payload

        # Per-stream word sources (multi-word items are sent element by element).
        src_valid, src_word, src_take = [], [], []
        for k, (s, port) in enumerate(zip(streams, self.inputs)):
            take = Signal(name=f"take{k}")
            word = Signal(64, name=f"word{k}")
            if s.words == 1:
                m.d.comb += [word.eq(port.payload), port.ready.eq(take)]
            else:
                idx = Signal(range(s.words), name=f"elem{k}")
                last = idx == s.words - 1
                m.d.comb += [word.eq(port.payload[idx]), port.ready.eq(take & last)]
                with m.If(take):
                    m.d.sync += idx.eq(Mux(last, 0, idx + 1))
            src_valid.append(port.valid)
            src_word.append(word)
            src_take.append(take)

        # Credits.
        m.d.comb += self.credit_i.ready.eq(1)
        credit = [Signal(range(s.depth + 1), init=s.depth, name=f"credit{k}")
                  for k, s in enumerate(streams)]
        for k in range(n):
            back = Mux(self.credit_i.valid, self.credit_i.payload[k], 0)
            m.d.sync += credit[k].eq(credit[k] + back - src_take[k])
        eligible = Signal(n)
        m.d.comb += eligible.eq(Cat(*(src_valid[k] & (credit[k] != 0) for k in range(n))))

        # Staging banks.
        NB = self._banks
        m.submodules.staging = staging = Memory(shape=64, depth=max(NB * P, 2), init=[])
        wr = staging.write_port()
        rd = staging.read_port()

        full = [Signal(name=f"full{b}") for b in range(NB)]
        bank_len = [Signal(range(P + 1), name=f"len{b}") for b in range(NB)]
        bank_sid = [Signal(range(max(n, 2)), name=f"sid{b}") for b in range(NB)]
        bases = [Const(b * P, range(NB * P + 1)) for b in range(NB)]

        def next_bank(b):
            return Mux(b == NB - 1, 0, b + 1)

        # Gatherer.
        g_bank = Signal(range(NB))
        g_active = Signal()
        g_sid = Signal(range(max(n, 2)))
        g_count = Signal(range(P + 1))
        rr_last = Signal(range(max(n, 2)), init=n - 1)
        choice = Signal(range(max(n, 2)))
        # Round-robin: the first eligible stream after rr_last.
        for last in range(n):
            with m.If(rr_last == last):
                for off in range(n, 0, -1):
                    k = (last + off) % n
                    with m.If(eligible[k]):
                        m.d.comb += choice.eq(k)

        cur = Signal(range(max(n, 2)))              # stream taken from this cycle
        taking = Signal()
        bank_free = ~_pick(g_bank, full)
        with m.If(~g_active):
            m.d.comb += [cur.eq(choice), taking.eq(bank_free & eligible.any())]
        with m.Else():
            m.d.comb += [cur.eq(g_sid),
                         taking.eq(eligible.bit_select(g_sid, 1) & (g_count != P))]
        for k in range(n):
            m.d.comb += src_take[k].eq(taking & (cur == k))
        count = Mux(g_active, g_count, 0)
        m.d.comb += [
            wr.addr.eq(_pick(g_bank, bases) + count),
            wr.data.eq(_pick(cur, src_word)),
            wr.en.eq(taking),
        ]
        close = Signal()
        with m.If(taking):
            m.d.comb += close.eq((count + 1 == P) | (_pick(cur, credit) == 1))
        with m.Else():
            m.d.comb += close.eq(g_active)
        new_len = Mux(taking, count + 1, count)
        with m.If(close):
            for b in range(NB):
                with m.If(g_bank == b):
                    m.d.sync += [full[b].eq(1), bank_len[b].eq(new_len), bank_sid[b].eq(cur)]
            m.d.sync += [g_bank.eq(next_bank(g_bank)), g_active.eq(0)]
        with m.Elif(taking):
            m.d.sync += [g_active.eq(1), g_count.eq(count + 1), g_sid.eq(cur)]
        with m.If(taking & ~g_active):
            m.d.sync += rr_last.eq(cur)

        # Sender: HEADER (waiting for a full bank), PAYLOAD, TRAILER.
        HEADER, PAYLOAD, TRAILER = 0, 1, 2
        state = Signal(2)
        s_bank = Signal(range(NB))
        s_idx = Signal(range(P + 1))
        crc = Signal(32)
        seq = [Signal(16, name=f"seq{k}") for k in range(n)]
        s_len = _pick(s_bank, bank_len)
        s_sid = _pick(s_bank, bank_sid)
        len8 = Signal(8)
        top = Signal(48)
        m.d.comb += [len8.eq(s_len),
                     top.eq(Cat(_pick(s_sid, seq), Const(0, 8), len8,
                                _pick(s_sid, [Const(s.sid, 8) for s in streams]),
                                Const(SYNC, 8)))]
        header = Signal(64)
        m.d.comb += header.eq(Cat(crc16_header(top), top))
        sent = self.o.valid & self.o.ready
        base = _pick(s_bank, bases)
        bank_full = _pick(s_bank, full)
        m.d.comb += rd.en.eq(1)

        # Credit frames for the opposite direction (cumulative totals, see the class docstring).
        is_credit = Signal()            # the frame being sent is a credit frame
        sel_credit = Signal()           # HEADER: the frame offered is a credit frame
        credit_turn = Signal(init=1)    # the last frame sent was a data frame
        frame_len = Signal(range(max(P, 64) + 1))
        if self._reverse is not None:
            nr = len(self._reverse)
            lc = -(-nr // 4)
            m.d.comb += self.credit_send.ready.eq(1)
            got = self.credit_send.valid
            totals = [Signal(16, name=f"total{k}") for k in range(nr)]
            snap = [Signal(16, name=f"snap{k}") for k in range(nr)]
            for k in range(nr):
                with m.If(got):
                    m.d.sync += totals[k].eq(totals[k] + self.credit_send.payload[k])
            dirty = Signal()
            interval = self._credit_interval
            ripe = Const(1)
            if interval:
                since = Signal(range(interval + 1), init=interval)
                with m.If(since != interval):
                    m.d.sync += since.eq(since + 1)
                ripe = since == interval
                if self._credit_urgent:
                    # a stream whose far transmitter may have used half of its credit does
                    # not wait for the interval
                    for k, rs in enumerate(self._reverse):
                        pending = (totals[k] - snap[k])[:16]
                        ripe = ripe | (pending >= max(1, rs.depth // 2))
            held = Signal()             # a header offered but not taken: keep the choice
            held_credit = Signal()
            want = dirty & ripe & (credit_turn | ~bank_full)
            m.d.comb += sel_credit.eq(Mux(held, held_credit, want))
            top_c = (SYNC << 40) | (lc << 24) | (1 << 16)
            credit_header = Const((top_c << 16) | _crc16_serial(top_c), 64)
            credit_word = _pick(s_idx, [Cat(*snap[4 * j:4 * j + 4]) for j in range(lc)])
            take_credit = Signal()
            m.d.comb += take_credit.eq((state == HEADER) & sent & sel_credit)
            m.d.sync += dirty.eq((dirty & ~take_credit) | got)
            with m.If(take_credit):
                m.d.sync += [s.eq(t) for s, t in zip(snap, totals)]
                if interval:
                    m.d.sync += since.eq(0)
            with m.If(state == HEADER):
                with m.If(self.o.valid & ~self.o.ready):
                    m.d.sync += [held.eq(1), held_credit.eq(sel_credit)]
                with m.Else():
                    m.d.sync += held.eq(0)
            m.d.comb += frame_len.eq(Mux(is_credit, lc, s_len))
        else:
            credit_header = header
            credit_word = rd.data
            m.d.comb += frame_len.eq(s_len)

        with m.If(state == HEADER):
            m.d.comb += [self.o.valid.eq(bank_full | sel_credit),
                         self.o.payload.eq(Mux(sel_credit, credit_header, header)),
                         rd.addr.eq(base)]
            with m.If(sent):
                m.d.sync += [crc.eq(crc32c_next(Const(0xFFFFFFFF, 32), self.o.payload)),
                             s_idx.eq(0), state.eq(PAYLOAD), is_credit.eq(sel_credit)]
        with m.Elif(state == PAYLOAD):
            m.d.comb += [self.o.valid.eq(1),
                         self.o.payload.eq(Mux(is_credit, credit_word, rd.data)),
                         rd.addr.eq(base + s_idx + sent)]
            with m.If(sent):
                m.d.sync += [crc.eq(crc32c_next(crc, self.o.payload)), s_idx.eq(s_idx + 1)]
                with m.If(s_idx + 1 == frame_len):
                    m.d.sync += state.eq(TRAILER)
        with m.Else():
            m.d.comb += [self.o.valid.eq(1),
                         self.o.payload.eq(Cat(~crc, Const(TRAILER_MARK, 32)))]
            with m.If(sent):
                with m.If(is_credit):
                    m.d.sync += credit_turn.eq(0)
                with m.Else():
                    m.d.sync += credit_turn.eq(1)
                    for b in range(NB):
                        with m.If(s_bank == b):
                            m.d.sync += full[b].eq(0)
                    for k in range(n):
                        with m.If(s_sid == k):
                            m.d.sync += seq[k].eq(seq[k] + s_len)
                    m.d.sync += s_bank.eq(next_bank(s_bank))
                m.d.sync += state.eq(HEADER)
        # The gatherer closing bank g_bank and the sender freeing s_bank in the same cycle
        # touch different banks (a bank is closed only while free, freed only while full).
        return m


# --- Receiver -----------------------------------------------------------------------------------

class _RxBuffer(wiring.Component):
    """Receive buffer of one stream: speculative writes, commit or rollback, stream output.

    Words of a frame are written as they arrive (``w_en``) but become visible on ``o`` only when
    the frame's trailer checks (``commit``); ``rollback`` discards them. ``level`` counts
    committed words (including the one presented on ``o``) plus speculative ones; ``freed`` is
    high in a cycle a word is transferred on ``o``. Committed words reach ``o`` two cycles after
    ``commit`` when the buffer was empty (``LATENCY``).
    """

    LATENCY = 2

    def __init__(self, width, depth):
        self._width = width
        self._depth = depth
        super().__init__({
            "w_en": In(1), "w_data": In(width), "commit": In(1), "rollback": In(1),
            "o": Out(stream.Signature(width)),
            "level": Out(range(depth + 1)),
            "freed": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        D = self._depth
        size = max(D, 2)
        m.submodules.mem = mem = Memory(shape=self._width, depth=size, init=[])
        wr = mem.write_port()
        rd = mem.read_port()

        def inc(ptr):
            return Mux(ptr == size - 1, 0, ptr + 1)

        wptr = Signal(range(size))
        cptr = Signal(range(size))
        rptr = Signal(range(size))
        stored = Signal(range(D + 1))       # committed, in memory, not fetched
        spec = Signal(range(D + 1))
        out_valid = Signal()

        m.d.comb += [wr.addr.eq(wptr), wr.data.eq(self.w_data), wr.en.eq(self.w_en)]
        with m.If(self.w_en):
            m.d.sync += wptr.eq(inc(wptr))

        advance = ~out_valid | self.o.ready
        fetch = advance & (stored != 0)
        m.d.comb += [rd.addr.eq(rptr), rd.en.eq(advance),
                     self.o.valid.eq(out_valid), self.o.payload.eq(rd.data)]
        with m.If(advance):
            m.d.sync += out_valid.eq(stored != 0)
        with m.If(fetch):
            m.d.sync += rptr.eq(inc(rptr))

        with m.If(self.commit):
            m.d.sync += [stored.eq(stored - fetch + spec), spec.eq(0), cptr.eq(wptr)]
        with m.Elif(self.rollback):
            m.d.sync += [stored.eq(stored - fetch), spec.eq(0), wptr.eq(cptr)]
        with m.Else():
            m.d.sync += [stored.eq(stored - fetch), spec.eq(spec + self.w_en)]
        m.d.comb += [self.level.eq(stored + spec + out_valid),
                     self.freed.eq(self.o.valid & self.o.ready)]
        return m


class _Deserializer(wiring.Component):
    """64-bit words to ``words``-word items (element 0 first); one item per ``words`` words."""

    def __init__(self, words):
        self._words = words
        super().__init__({"i": In(stream.Signature(64)),
                          "o": Out(stream.Signature(data.ArrayLayout(64, words)))})

    def elaborate(self, platform):
        m = Module()
        k = self._words
        regs = [Signal(64, name=f"elem{j}") for j in range(k - 1)]
        count = Signal(range(k))
        full = count == k - 1
        m.d.comb += [self.o.valid.eq(full & self.i.valid),
                     self.o.payload.eq(Cat(*regs, self.i.payload)),
                     self.i.ready.eq(~full | self.o.ready)]
        with m.If(self.i.valid & self.i.ready):
            with m.If(full):
                m.d.sync += count.eq(0)
            with m.Else():
                m.d.sync += count.eq(count + 1)
                for j in range(k - 1):
                    with m.If(count == j):
                        m.d.sync += regs[j].eq(self.i.payload)
        return m


class LinkRx(wiring.Component):
    """Check frames from one 64-bit word stream and sort good payload into per-stream buffers.

    ``i`` is always ready (the Aurora streaming RX interface has no ready: credits guarantee the
    room). Per word:

    - **Header** expected: a good header (SYNC, kind 0, known sid, 1 <= length <= max_payload,
      CRC-16) starts a frame; a bad one counts one ``crc_errors`` and starts *hunting* (words are
      dropped until a good header; bad headers while hunting are not counted again). A good
      header whose length does not fit in its stream's buffer (only possible with a corrupted
      header that passed its CRC-16) marks the frame bad.
    - **Payload** words are written speculatively into the stream's buffer.
    - **Trailer**: a wrong mark or CRC-32C, or a bad frame, rolls the words back and counts one
      ``crc_errors``. A good frame whose ``seq`` is not the stream's expected one is rolled back,
      counts one ``seq_errors`` and resynchronises the expectation to ``seq + length``; its words
      and the ``seq`` gap (words lost in earlier dropped frames) are returned as credits, since
      they will never occupy the buffer. Otherwise the words are committed and ``frames``
      counts the frame.

    Credits: each word transferred on an output (and each released word above) is added to a
    per-stream pending count; ``credit_o`` offers the pending counts whenever any is non-zero.
    Credits of a frame dropped for a CRC error are returned only when the stream's next good
    frame reveals the gap (its header cannot be trusted); a stream recovers from the loss as long
    as its buffer depth exceeds the words lost.

    Pass-through is a connection in the node: an output of ``LinkRx`` wired to an input of the
    ``LinkTx`` of the outgoing link (``docs/hw-link.md``).

    Timing: the payload of a frame whose trailer is transferred on ``i`` at cycle ``t`` is valid
    on its output from ``t + LATENCY`` (2) if the buffer was empty (one-word items;
    ``words - 1`` cycles more for multi-word items).

    Parameters
    ----------
    streams : list of LinkStream
        The streams carried, in output order (same list as the transmitter's).
    max_payload : int
        Maximum payload words per frame, 1..255 (same as the transmitter's).
    reverse : list of LinkStream, optional
        Streams of the opposite direction: credit frames for them are accepted (kind 1, checked
        like data frames, no sequence check) and their credits offered on ``credit_recv``, as
        the differences of the cumulative totals (a lost credit frame is made good by the next).

    Members
    -------
    i : ``In(stream.Signature(64))``
        Frame words from the PHY (or link model); ``ready`` is constant 1.
    o0, o1, ... : ``Out(stream.Signature(streams[k].shape))``
        Output stream of each carried stream (also as the list :attr:`outputs`).
    credit_o : ``Out(stream.Signature(credit_layout(streams)))``
        Credits to return to the transmitter.
    crc_errors, seq_errors, frames : ``Out(32)``
        Frames dropped as corrupt, frames dropped for a sequence gap, frames delivered.
    levels : ``Out(data.ArrayLayout(16, n))``
        Receive buffer level of each stream (committed plus speculative words).
    credit_recv : ``Out(stream.Signature(credit_layout(reverse)))``
        Only with ``reverse``: credits received in credit frames, for the local transmitter of
        the opposite direction.
    """

    LATENCY = 2

    def __init__(self, streams, *, max_payload=32, reverse=None):
        self._streams = _check_streams("LinkRx", streams)
        _check_max_payload("LinkRx", max_payload)
        self._reverse = None if reverse is None else _check_streams("LinkRx reverse", reverse)
        self._max_payload = max_payload
        members = {"i": In(stream.Signature(64))}
        members.update({f"o{k}": Out(stream.Signature(s.shape))
                        for k, s in enumerate(self._streams)})
        members["credit_o"] = Out(stream.Signature(credit_layout(self._streams)))
        if self._reverse is not None:
            members["credit_recv"] = Out(stream.Signature(credit_layout(self._reverse)))
        members["crc_errors"] = Out(32)
        members["seq_errors"] = Out(32)
        members["frames"] = Out(32)
        members["levels"] = Out(data.ArrayLayout(16, len(self._streams)))
        super().__init__(members)

    streams = property(lambda self: self._streams)
    max_payload = property(lambda self: self._max_payload)
    reverse = property(lambda self: self._reverse)

    @property
    def outputs(self):
        return [getattr(self, f"o{k}") for k in range(len(self._streams))]

    def elaborate(self, platform):
        m = Module()
        streams = self._streams
        n = len(streams)
        P = self._max_payload

        bufs = []
        for k, s in enumerate(streams):
            buf = _RxBuffer(64 if s.words > 1 else s.width, s.depth)
            m.submodules[f"buf{k}"] = buf
            bufs.append(buf)
            if s.words > 1:
                des = _Deserializer(s.words)
                m.submodules[f"des{k}"] = des
                wiring.connect(m, buf.o, des.i)
                wiring.connect(m, des.o, wiring.flipped(self.outputs[k]))
            else:
                wiring.connect(m, buf.o, wiring.flipped(self.outputs[k]))
            m.d.comb += self.levels[k].eq(buf.level)

        word = self.i.payload
        take = self.i.valid
        m.d.comb += self.i.ready.eq(1)

        # Header check.
        h_sync, h_sid, h_len, h_kind, h_seq, h_crc = \
            word[56:64], word[48:56], word[40:48], word[32:40], word[16:32], word[0:16]
        hits = Cat(*(h_sid == s.sid for s in streams))
        h_idx = Signal(range(max(n, 2)))
        for k in range(n):
            with m.If(hits[k]):
                m.d.comb += h_idx.eq(k)
        h_good = Signal()
        h_credit = Signal()
        rev = self._reverse
        lc = -(-len(rev) // 4) if rev is not None else 0
        h_crc_ok = (h_sync == SYNC) & (crc16_header(word[16:64]) == h_crc)
        if rev is not None:
            m.d.comb += h_credit.eq(h_crc_ok & (h_kind == 1) & (h_sid == 0) & (h_seq == 0) &
                                    (h_len == lc))
        m.d.comb += h_good.eq(h_credit | (h_crc_ok & (h_kind == 0) & hits.any() & (h_len != 0) &
                                          (h_len <= P)))
        free = [Const(s.depth, 16) - bufs[k].level for k, s in enumerate(streams)]

        sid = Signal(range(max(n, 2)))
        length = Signal(range(P + 1))
        seq = Signal(16)
        count = Signal(range(P + 1))
        bad = Signal()
        hunting = Signal()
        crc = Signal(32)
        expect = [Signal(16, name=f"expect{k}") for k in range(n)]
        depth = _pick(sid, [Const(s.depth, 16) for s in streams])

        commit = Signal()
        rollback = Signal()
        release = Signal(16)          # credits released for the current stream (seq gap)
        writing = Signal()
        is_credit = Signal()
        credit_ok = Signal()          # a good credit frame ends this cycle
        for k in range(n):
            m.d.comb += [bufs[k].w_en.eq(writing & (sid == k)),
                         bufs[k].w_data.eq(word),
                         bufs[k].commit.eq(commit & (sid == k)),
                         bufs[k].rollback.eq(rollback & (sid == k))]
        cap = [Signal(64, name=f"credit_word{j}") for j in range(lc)]

        HEADER, PAYLOAD, TRAILER = 0, 1, 2
        state = Signal(2)
        gap = Signal(16)
        m.d.comb += gap.eq(seq - _pick(sid, expect))
        resync = Signal()
        with m.If(resync):
            for k in range(n):
                with m.If(sid == k):
                    m.d.sync += expect[k].eq(seq + length)
        with m.If(state == HEADER):
            with m.If(take):
                with m.If(h_good):
                    m.d.sync += [sid.eq(h_idx), length.eq(h_len), seq.eq(h_seq),
                                 count.eq(0), hunting.eq(0), is_credit.eq(h_credit),
                                 bad.eq(~h_credit & (_pick(h_idx, free) < h_len)),
                                 crc.eq(crc32c_next(Const(0xFFFFFFFF, 32), word)),
                                 state.eq(PAYLOAD)]
                with m.Else():
                    m.d.sync += hunting.eq(1)
                    with m.If(~hunting):
                        m.d.sync += self.crc_errors.eq(self.crc_errors + 1)
        with m.Elif(state == PAYLOAD):
            m.d.comb += writing.eq(take & ~bad & ~is_credit)
            with m.If(take):
                m.d.sync += [crc.eq(crc32c_next(crc, word)), count.eq(count + 1)]
                for j in range(lc):
                    with m.If(count == j):
                        m.d.sync += cap[j].eq(word)
                with m.If(count + 1 == length):
                    m.d.sync += state.eq(TRAILER)
        with m.Else():
            with m.If(take):
                m.d.sync += state.eq(HEADER)
                ok = (word == Cat(~crc, Const(TRAILER_MARK, 32))) & ~bad
                with m.If(~ok):
                    m.d.comb += rollback.eq(~is_credit)
                    m.d.sync += self.crc_errors.eq(self.crc_errors + 1)
                with m.Elif(is_credit):
                    m.d.comb += credit_ok.eq(1)
                with m.Elif(gap != 0):
                    m.d.comb += [rollback.eq(1), resync.eq(1)]
                    m.d.sync += self.seq_errors.eq(self.seq_errors + 1)
                    with m.If(gap + length <= depth):
                        m.d.comb += release.eq(gap + length)
                with m.Else():
                    m.d.comb += [commit.eq(1), resync.eq(1)]
                    m.d.sync += self.frames.eq(self.frames + 1)

        # Credits received in credit frames: differences of the cumulative totals.
        if rev is not None:
            nr = len(rev)
            rw = unsigned(credit_layout(rev).elem_shape).width
            last = [Signal(16, name=f"last_total{k}") for k in range(nr)]
            rpend = [Signal(rw, name=f"rpend{k}") for k in range(nr)]
            deltas = []
            for k in range(nr):
                total = cap[k // 4][16 * (k % 4):16 * (k % 4) + 16]
                delta = Signal(16, name=f"delta{k}")
                m.d.comb += delta.eq(Mux(credit_ok & (total - last[k] <= rev[k].depth),
                                         total - last[k], 0))
                deltas.append(delta)
                with m.If(credit_ok):
                    m.d.sync += last[k].eq(total)
            m.d.comb += self.credit_recv.valid.eq(Cat(*(p != 0 for p in rpend)).any())
            for k in range(nr):
                m.d.comb += self.credit_recv.payload[k].eq(rpend[k])
                with m.If(self.credit_recv.valid & self.credit_recv.ready):
                    m.d.sync += rpend[k].eq(deltas[k])
                with m.Else():
                    m.d.sync += rpend[k].eq(rpend[k] + deltas[k])

        # Credit return.
        cw = unsigned(credit_layout(streams).elem_shape).width
        pend = [Signal(cw, name=f"pend{k}") for k in range(n)]
        incs = [bufs[k].freed + Mux(sid == k, release, 0) for k in range(n)]
        m.d.comb += self.credit_o.valid.eq(Cat(*(p != 0 for p in pend)).any())
        for k in range(n):
            m.d.comb += self.credit_o.payload[k].eq(pend[k])
            with m.If(self.credit_o.valid & self.credit_o.ready):
                m.d.sync += pend[k].eq(incs[k])
            with m.Else():
                m.d.sync += pend[k].eq(pend[k] + incs[k])
        return m
