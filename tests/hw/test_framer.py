# amaranth: UnusedElaboratable=no
"""Tests of :mod:`fpdeep_hw.link.framer` (LinkTx, LinkRx) against :mod:`sim.golden.framer`.

Every run goes TX -> :class:`sim.link_model.LinkModel` -> RX, with the credits returned through a
second link model (the reverse direction's latency). The words on the wire before the link model
are parsed by the golden model, re-encoded from the input data and compared word for word (frame
format, seq, both CRCs); the received words after the link model go through the golden receiver
and the RX outputs and counters must match it exactly.
"""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from fpdeep_hw.link.framer import LinkRx, LinkStream, LinkTx, credit_layout, frame_latency
from sim.golden import framer as golden
from sim.link_model import LinkModel
from sim.streams import payload_to_python, stream_sink, stream_source
from sim.lint import verilator_lint


def _items(stream, count, rng):
    if stream.words == 1:
        return [rng.getrandbits(stream.width) for _ in range(count)]
    return [[rng.getrandbits(64) for _ in range(stream.words)] for _ in range(count)]


def _words(stream, items):
    return [w for item in items for w in golden.item_to_words(item, stream.words)]


class Run:
    """Result of :func:`simulate`: wire words, delivered items, counters, levels, timings."""


def simulate(streams, items, *, max_payload=8, latency=6, rate=1, credit_latency=None,
             flips=(), p_src=0.0, p_sink=0.0, seed=0, idle=None, max_cycles=200_000,
             src_stall=None, sink_stall=None, banks=3):
    """Run TX -> link -> RX on ``items`` (one list per stream) until everything has settled."""
    n = len(streams)
    tx = LinkTx(streams, max_payload=max_payload, banks=banks)
    rx = LinkRx(streams, max_payload=max_payload)
    link = LinkModel(width=64, latency=latency, words_per_cycle=rate, flips=flips)
    cwidth = credit_layout(streams).size
    back = LinkModel(width=cwidth, latency=credit_latency or latency)
    m = Module()
    m.submodules.tx = tx
    m.submodules.link = link
    m.submodules.back = back
    m.submodules.rx = rx
    m.d.comb += [
        link.i.valid.eq(tx.o.valid), link.i.payload.eq(tx.o.payload), tx.o.ready.eq(link.i.ready),
        rx.i.valid.eq(link.o.valid), rx.i.payload.eq(link.o.payload), link.o.ready.eq(rx.i.ready),
        back.i.valid.eq(rx.credit_o.valid), back.i.payload.eq(rx.credit_o.payload),
        rx.credit_o.ready.eq(back.i.ready),
        tx.credit_i.valid.eq(back.o.valid), tx.credit_i.payload.eq(back.o.payload),
        back.o.ready.eq(tx.credit_i.ready),
    ]
    sim = Simulator(m)
    sim.add_clock(1e-8)
    rng = random.Random(seed)
    run = Run()
    run.tx, run.rx, run.link = tx, rx, link
    run.out = [[] for _ in range(n)]
    run.out_cycles = [[] for _ in range(n)]
    run.done = [False] * n
    run.in_cycles = [[] for _ in range(n)]
    src_stall = src_stall if src_stall is not None else [p_src] * n
    sink_stall = sink_stall if sink_stall is not None else [p_sink] * n

    for k in range(n):
        source = stream_source(tx.inputs[k], items[k], rng=random.Random(rng.random()),
                               p_stall=src_stall[k])

        async def src(ctx, source=source, k=k):
            await source(ctx)
            run.done[k] = True
        sim.add_testbench(src, background=True)

        def on_word(cycle, word, k=k):
            run.out_cycles[k].append(cycle)
        sim.add_testbench(stream_sink(rx.outputs[k], run.out[k], count=10**9,
                                      rng=random.Random(rng.random()), p_stall=sink_stall[k],
                                      on_word=on_word), background=True)

    settle = idle or (latency + (credit_latency or latency) + 4 * (max_payload + 2) + 20)
    run.tx_wire, run.rx_wire, run.tx_cycles, run.rx_cycles = [], [], [], []
    run.max_level = [0] * n
    run.waits = [0] * n

    async def monitor(ctx):
        quiet = 0
        cycle = 0
        streak = [0] * n
        ports = [(p.valid, p.ready) for p in tx.inputs]
        flat = [s for pair in ports for s in pair]
        while True:
            _, _, iv, ir, ip, ov, op, levels, *vr = await ctx.tick().sample(
                link.i.valid, link.i.ready, link.i.payload, link.o.valid, link.o.payload,
                rx.levels, *flat)
            if iv and ir:
                run.tx_wire.append(int(ip))
                run.tx_cycles.append(cycle)
            if ov:
                run.rx_wire.append(int(op))
                run.rx_cycles.append(cycle)
            levels = payload_to_python(levels)
            for k in range(n):
                run.max_level[k] = max(run.max_level[k], levels[k])
                valid, ready = vr[2 * k], vr[2 * k + 1]
                if valid and ready:
                    run.in_cycles[k].append(cycle)
                streak[k] = streak[k] + 1 if valid and not ready else 0
                run.waits[k] = max(run.waits[k], streak[k])
            busy = (iv and ir) or ov or any(levels) or not all(run.done)
            quiet = 0 if busy else quiet + 1
            cycle += 1
            if quiet >= settle:
                break
            assert cycle < max_cycles, "simulation did not settle"
        run.cycles = cycle
        run.crc_errors = ctx.get(rx.crc_errors)
        run.seq_errors = ctx.get(rx.seq_errors)
        run.frames = ctx.get(rx.frames)
        run.corrupted = ctx.get(link.corrupted)

    sim.add_testbench(monitor)
    sim.run()
    return run


def check_clean(streams, items, run, max_payload):
    """No errors: every stream complete and in order; the wire matches the golden encoder."""
    sids = [s.sid for s in streams]
    words = {s.sid: _words(s, it) for s, it in zip(streams, items)}
    for k, s in enumerate(streams):
        assert run.out[k] == items[k], f"stream {s.sid} differs"
        assert run.max_level[k] <= s.depth
    schedule = golden.split_frames(run.tx_wire, sids, max_payload)
    assert all(1 <= length <= max_payload for _, length in schedule)
    assert run.tx_wire == golden.encode(words, schedule)
    assert run.rx_wire == run.tx_wire
    res = golden.receive(run.rx_wire, sids, max_payload)
    assert res.delivered == words
    assert (run.crc_errors, run.seq_errors, run.frames) == (0, 0, len(schedule))
    return schedule


# --- construction -------------------------------------------------------------------------------

def test_stream_validation():
    with pytest.raises(ValueError, match=r"^Link stream id must be an integer in 0\.\.255, "
                                         r"not 256$"):
        LinkStream(256)
    with pytest.raises(ValueError, match=r"^Link stream path must be one of activations, "):
        LinkStream(1, path="weights")
    with pytest.raises(ValueError, match=r"^Link stream width must be an integer in 1\.\.64, "
                                         r"not 65$"):
        LinkStream(1, width=65)
    with pytest.raises(ValueError, match=r"^Link stream items of several words must have width "
                                         r"64, not 16$"):
        LinkStream(1, width=16, words=2)
    with pytest.raises(ValueError, match=r"^Link stream depth must be an integer in 1\.\.65535, "
                                         r"not 0$"):
        LinkStream(1, depth=0)
    with pytest.raises(ValueError, match=r"^Link stream words per item must be a positive "
                                         r"integer, not 0$"):
        LinkStream(1, words=0)


def test_framer_validation():
    with pytest.raises(TypeError, match=r"^LinkTx streams must be a non-empty list of "
                                        r"LinkStream, not \[\]$"):
        LinkTx([])
    with pytest.raises(ValueError, match=r"^LinkRx stream ids must be unique, not \[3, 3\]$"):
        LinkRx([LinkStream(3), LinkStream(3)])
    with pytest.raises(ValueError, match=r"^LinkTx max_payload must be an integer in 1\.\.255, "
                                         r"not 256$"):
        LinkTx([LinkStream(3)], max_payload=256)
    with pytest.raises(ValueError, match=r"^LinkTx credit_interval must be a non-negative "
                                         r"integer, not -1$"):
        LinkTx([LinkStream(3)], reverse=[LinkStream(3)], credit_interval=-1)
    with pytest.raises(ValueError, match=r"^LinkTx banks must be an integer in 2\.\.4, not 5$"):
        LinkTx([LinkStream(3)], banks=5)
    with pytest.raises(TypeError, match=r"^LinkRx reverse streams must be a non-empty list of "
                                        r"LinkStream, not \[\]$"):
        LinkRx([LinkStream(3)], reverse=[])


# --- CRC and format -----------------------------------------------------------------------------

def test_golden_crc_check_values():
    assert golden.crc32c(b"123456789") == 0xE3069283      # CRC-32C catalogue check value
    assert golden.crc16_ccitt(b"123456789") == 0x29B1     # CRC-16/CCITT-FALSE check value


def test_hardware_crc_matrices_match_golden():
    from fpdeep_hw.link import framer as hw
    rng = random.Random(5)
    for _ in range(200):
        state, word = rng.getrandbits(32), rng.getrandbits(64)
        # Raw register update: golden byte-wise CRC on 8 bytes with the same initial register.
        c = state
        for b in word.to_bytes(8, "big"):
            c = (c >> 8) ^ golden._T32[(c ^ b) & 0xFF]
        acc = 0
        for i, row in enumerate(hw._CRC32_ROWS):
            v = (state | (word << 32))
            acc |= (bin(v & sum(1 << j for j in row)).count("1") & 1) << i
        assert acc == c
        top = rng.getrandbits(48)
        h = 0
        for i, row in enumerate(hw._CRC16_ROWS):
            bit = bin(top & sum(1 << j for j in row)).count("1") & 1
            h |= (bit ^ ((hw._CRC16_CONST >> i) & 1)) << i
        assert h == golden.crc16_ccitt(top.to_bytes(6, "big"))


# --- data paths ---------------------------------------------------------------------------------

STREAMS4 = [
    LinkStream(3, "activations", width=16, depth=12),
    LinkStream(9, "partial_sums", width=32, depth=16),
    LinkStream(17, "parameters", width=64, words=3, depth=18),
    LinkStream(40, "gradients", width=16, depth=17),
]


@pytest.mark.parametrize("banks", [2, 3, 4])
def test_random_streams_with_stalls(banks):
    rng = random.Random(11)
    items = [_items(s, c, rng) for s, c in zip(STREAMS4, (60, 45, 14, 50))]
    run = simulate(STREAMS4, items, max_payload=8, latency=5, p_src=0.3, p_sink=0.3, seed=1,
                   banks=banks)
    check_clean(STREAMS4, items, run, 8)


@pytest.mark.parametrize("banks", [2, 3])
def test_short_frames_leave_the_link_to_a_backlogged_stream(banks):
    """A slow stream (a word now and then: frames of one word) beside a backlogged one (a
    word every cycle) on a full-rate link. With two staging banks the backlogged stream's long
    frame starts gathering only when the short frame's bank is free, and the link idles while
    it gathers: the backlogged stream gets about half the link (the ICP partial sums beside
    the activations of ``tiny`` on two nodes ran at 528 instead of 384 cycles per image). With
    three banks (the default) the gatherer works ahead and the link stays busy."""
    streams = [LinkStream(1, "activations", width=64, depth=1024),
               LinkStream(2, "partial_sums", width=64, depth=1024)]
    rng = random.Random(5)
    items = [_items(streams[0], 24, rng), _items(streams[1], 600, rng)]
    run = simulate(streams, items, max_payload=32, latency=20, src_stall=[0.95, 0.0],
                   seed=2, banks=banks)
    check_clean(streams, items, run, 32)
    cyc = run.in_cycles[1]
    # words of the backlogged stream per cycle while both streams are active
    window = [c for c in cyc if c <= run.in_cycles[0][-1]]
    rate = (len(window) - 1) / (window[-1] - window[0])
    busy = sum(1 for c in run.tx_cycles if window[0] <= c <= window[-1]) / (window[-1] - window[0])
    print(banks, round(rate, 3), round(busy, 3))
    if banks == 2:
        assert rate < 0.6
    else:
        assert rate > 0.85 and busy > 0.93


@pytest.mark.parametrize("n", [3, 6])
def test_random_stream_counts(n):
    rng = random.Random(n)
    streams = [LinkStream(sid=rng.randrange(256) if k else 0,
                          path=("activations", "errors", "partial_errors")[k % 3],
                          width=rng.randint(1, 64), depth=rng.randint(9, 20))
               for k in range(n)]
    sids = set()
    for k, s in enumerate(streams):
        while s.sid in sids:
            s = LinkStream(s.sid + 1 & 255, s.path, s.width, s.words, s.depth)
        streams[k] = s
        sids.add(s.sid)
    items = [_items(s, rng.randint(10, 30), rng) for s in streams]
    run = simulate(streams, items, max_payload=rng.randint(2, 9), latency=rng.randint(1, 9),
                   p_src=0.4, p_sink=0.4, seed=n)
    check_clean(streams, items, run, run.tx.max_payload)


def test_slow_consumer_credits_bound_buffers():
    # Shallow buffers, consumers stalled 85% of the time: credits must hold the levels.
    streams = [LinkStream(1, width=8, depth=3), LinkStream(2, width=64, depth=5),
               LinkStream(5, width=64, words=2, depth=4)]
    rng = random.Random(3)
    items = [_items(s, c, rng) for s, c in zip(streams, (30, 30, 12))]
    run = simulate(streams, items, max_payload=8, latency=7, p_src=0.0, p_sink=0.85, seed=4)
    check_clean(streams, items, run, 8)
    for k, s in enumerate(streams):
        assert run.max_level[k] == s.depth      # filled to the brim, never beyond
    # No frame longer than the stream's buffer: the credit limit applies per frame too.
    schedule = golden.split_frames(run.tx_wire, [s.sid for s in streams], 8)
    depth = {s.sid: s.depth for s in streams}
    assert all(length <= depth[sid] for sid, length in schedule)


def test_round_robin_order_when_saturated():
    streams = [LinkStream(s, width=32, depth=64) for s in (4, 8, 15, 16)]
    rng = random.Random(8)
    items = [_items(s, 24, rng) for s in streams]
    run = simulate(streams, items, max_payload=6, latency=3)
    schedule = check_clean(streams, items, run, 6)
    assert [sid for sid, _ in schedule] == [4, 8, 15, 16] * 4
    assert all(length == 6 for _, length in schedule)
    # Saturated: the link carries a word every cycle from the first header to the last trailer.
    assert len(run.tx_wire) == 4 * 4 * (6 + 2)


def test_fairness_bounded_wait():
    # Stream 0 always has data; the others come and go. A word waits at most for the bank on
    # the wire and the bank being gathered, then one frame of each of the n - 1 other streams
    # ahead of it in the round robin (P + 2 wire cycles each), plus the arbitration and closing
    # cycles: (n + 1) * (P + 2) + 2.
    P = 8
    streams = [LinkStream(1, width=64, depth=64), LinkStream(2, width=16, depth=64),
               LinkStream(3, width=16, depth=64), LinkStream(4, width=16, depth=64)]
    rng = random.Random(21)
    items = [_items(s, c, rng) for s, c in zip(streams, (200, 40, 40, 40))]
    run = simulate(streams, items, max_payload=P, latency=3, src_stall=[0, 0.6, 0.6, 0.6],
                   sink_stall=[0] * 4, seed=2)
    check_clean(streams, items, run, P)
    n = len(streams)
    bound = (n + 1) * (P + 2) + 2
    assert max(run.waits[1:]) <= bound, run.waits
    assert run.waits[1] > 0
    # Round robin on the wire: between two frames of the always-eligible stream, every other
    # stream has at most one frame.
    sids = [sid for sid, _ in golden.split_frames(run.tx_wire, [1, 2, 3, 4], P)]
    ones = [k for k, sid in enumerate(sids) if sid == 1]
    for a, b in zip(ones, ones[1:]):
        between = sids[a + 1:b]
        assert len(between) == len(set(between)), between
    assert len(ones) > 20 and all(sids.count(s) > 5 for s in (2, 3, 4))


@pytest.mark.parametrize("rate", [1, 0.5, 0.3])
def test_throughput_follows_link_bandwidth(rate):
    P = 8
    streams = [LinkStream(1, width=64, depth=64), LinkStream(2, width=64, depth=64)]
    rng = random.Random(4)
    items = [_items(s, 120, rng) for s in streams]
    run = simulate(streams, items, max_payload=P, latency=4, rate=rate)
    check_clean(streams, items, run, P)
    first = min(c[0] for c in run.out_cycles)
    last = max(c[-1] for c in run.out_cycles)
    measured = (len(items[0]) + len(items[1])) / (last - first + 1)
    expected = float(run.link.rate) * P / (P + 2)
    assert abs(measured - expected) <= 0.03 * expected, (measured, expected)


@pytest.mark.parametrize("width,depth,max_payload", [(1, 1, 1), (64, 2, 255), (7, 5, 3)])
def test_edge_shapes(width, depth, max_payload):
    # One stream: one-bit words through a one-word buffer with one-word frames; a two-word
    # buffer with the largest frames allowed; frames longer than the buffer never sent.
    streams = [LinkStream(200, "errors", width=width, depth=depth)]
    rng = random.Random(depth)
    items = [_items(streams[0], 40, rng)]
    run = simulate(streams, items, max_payload=max_payload, latency=3, p_src=0.3, p_sink=0.5,
                   seed=depth)
    schedule = check_clean(streams, items, run, max_payload)
    assert max(length for _, length in schedule) == min(depth, max_payload)


@pytest.mark.parametrize("latency", [1, 6, 54])
def test_unloaded_latency(latency):
    streams = [LinkStream(7, width=32, depth=8), LinkStream(9, width=64, words=2, depth=8)]
    items = [[0x1234_5678], []]
    run = simulate(streams, items, max_payload=8, latency=latency)
    check_clean(streams, items, run, 8)
    assert run.out_cycles[0][0] - run.in_cycles[0][0] == frame_latency(latency)
    assert LinkTx.LATENCY == 2 and LinkRx.LATENCY == 2


# --- integrity ----------------------------------------------------------------------------------

def _frame_spans(wire, sids, max_payload):
    spans = []
    k = 0
    for sid, length in golden.split_frames(wire, sids, max_payload):
        spans.append((k, k + length + 2, sid, length))
        k += length + 2
    return spans


def _check_integrity(streams, items, run, max_payload, flips, spaced=True):
    sids = [s.sid for s in streams]
    # The TX side is clean and golden-exact whatever happened downstream.
    spans = _frame_spans(run.tx_wire, sids, max_payload)
    words = {s.sid: _words(s, it) for s, it in zip(streams, items)}
    assert run.tx_wire == golden.encode(words, [(sid, ln) for _, _, sid, ln in spans])
    assert len(run.rx_wire) == len(run.tx_wire)
    flipped_words = sorted({w for w, _ in flips if w < len(run.tx_wire)})
    assert run.corrupted == len(flipped_words)
    assert [k for k, (a, b) in enumerate(zip(run.tx_wire, run.rx_wire)) if a != b] == \
        flipped_words
    corrupted = [f for f, (a, b, _, _) in enumerate(spans)
                 if any(a <= w < b for w in flipped_words)]
    # RX agrees with the golden receiver on everything.
    res = golden.receive(run.rx_wire, sids, max_payload)
    for k, s in enumerate(streams):
        assert run.out[k] == golden.words_to_items(res.delivered[s.sid], s.words)
    assert (run.crc_errors, run.seq_errors) == (res.crc_errors, res.seq_errors)
    # No word of a corrupted frame is delivered: every delivered frame is bit-identical to sent.
    for start, sid, length, outcome in res.frames:
        if outcome == "ok":
            assert run.rx_wire[start:start + length + 2] == run.tx_wire[start:start + length + 2]
    delivered_starts = {start for start, _, _, outcome in res.frames if outcome == "ok"}
    assert not delivered_starts & {spans[f][0] for f in corrupted}
    if spaced:
        # Corrupted frames apart from each other: each is detected and counted exactly once,
        # and the stream's next frame is dropped for its sequence gap.
        assert all(b - a > 1 for a, b in zip(corrupted, corrupted[1:]))
        assert run.crc_errors == len(corrupted)
        later = []
        for f in corrupted:
            sid = spans[f][2]
            nxt = [g for g in range(f + 1, len(spans)) if spans[g][2] == sid]
            if nxt and nxt[0] not in corrupted:
                later.append(nxt[0])
        assert run.seq_errors == len(set(later))
        assert run.frames == len(spans) - len(corrupted) - len(set(later))
    return spans, corrupted


def test_integrity_bit_flips_detected_and_dropped():
    P = 6
    streams = [LinkStream(2, width=64, depth=24), LinkStream(6, width=16, depth=24),
               LinkStream(12, width=64, words=2, depth=24)]
    rng = random.Random(9)
    items = [_items(s, c, rng) for s, c in zip(streams, (90, 90, 40))]
    # Words about 30 apart (separate frames, never two corrupted frames in a row): single
    # bits, two and three bits in one word, five adjacent bits, bits in two words of a frame.
    flips = [(9, 63), (40, 0), (41, 17), (70, 5), (70, 6), (70, 33), (101, 31),
             (131, 12), (131, 50), (160, 0), (160, 1), (160, 2), (160, 3), (160, 4),
             (190, 48), (221, 20), (221, 59), (250, 7), (281, 40), (310, 2), (311, 2)]
    run = simulate(streams, items, max_payload=P, latency=5, flips=flips, p_src=0.2,
                   p_sink=0.2, seed=7, max_cycles=20_000)
    spans, corrupted = _check_integrity(streams, items, run, P, flips)
    assert len(corrupted) >= 9
    kinds = set()
    for w, _ in flips:
        for a, b, _, _ in spans:
            if a <= w < b:
                kinds.add("header" if w == a else "trailer" if w == b - 1 else "payload")
    assert kinds == {"header", "payload", "trailer"}


def test_integrity_random_bit_errors():
    P = 8
    streams = [LinkStream(1, width=64, depth=32), LinkStream(2, width=32, depth=32),
               LinkStream(3, width=64, depth=32)]
    rng = random.Random(13)
    items = [_items(s, 150, rng) for s in streams]
    link = LinkModel(flip_rate=2e-4, seed=3, horizon=2000)
    run = simulate(streams, items, max_payload=P, latency=5, flips=link.flip_list, p_src=0.1,
                   p_sink=0.1, seed=3)
    spans, corrupted = _check_integrity(streams, items, run, P, link.flip_list, spaced=False)
    assert run.corrupted > 5 and run.crc_errors > 0
    # Never more errors counted than corrupted frames; fewer only when hunting swallows a
    # corrupted header right after a bad one.
    assert run.crc_errors <= len(corrupted)


# --- lint ---------------------------------------------------------------------------------------

def test_lint_tx(tmp_path):
    verilator_lint(LinkTx(STREAMS4, max_payload=8), "link_tx", tmp_path)


def test_lint_rx(tmp_path):
    verilator_lint(LinkRx(STREAMS4, max_payload=8), "link_rx", tmp_path)


# --- pass-through -------------------------------------------------------------------------------

def test_pass_through_node():
    """A -> B -> C: B keeps stream 1, forwards stream 2 (an RX output wired to its next TX) and
    adds its own stream 3; every stream arrives complete and in order where it is meant to."""
    from amaranth.lib import wiring

    P = 6
    ab = [LinkStream(1, "activations", width=16, depth=14),
          LinkStream(2, "activations", width=16, depth=14)]
    bc = [LinkStream(2, "activations", width=16, depth=14),
          LinkStream(3, "partial_sums", width=32, depth=14)]
    tx_a, rx_b = LinkTx(ab, max_payload=P), LinkRx(ab, max_payload=P)
    tx_b, rx_c = LinkTx(bc, max_payload=P), LinkRx(bc, max_payload=P)
    links = [LinkModel(latency=4), LinkModel(latency=4)]
    backs = [LinkModel(width=credit_layout(ab).size, latency=4),
             LinkModel(width=credit_layout(bc).size, latency=4)]
    m = Module()
    for name, sub in [("tx_a", tx_a), ("rx_b", rx_b), ("tx_b", tx_b), ("rx_c", rx_c),
                      ("l0", links[0]), ("l1", links[1]), ("b0", backs[0]), ("b1", backs[1])]:
        m.submodules[name] = sub
    for tx, rx, link, back in [(tx_a, rx_b, links[0], backs[0]), (tx_b, rx_c, links[1], backs[1])]:
        m.d.comb += [
            link.i.valid.eq(tx.o.valid), link.i.payload.eq(tx.o.payload),
            tx.o.ready.eq(link.i.ready),
            rx.i.valid.eq(link.o.valid), rx.i.payload.eq(link.o.payload),
            link.o.ready.eq(rx.i.ready),
            back.i.valid.eq(rx.credit_o.valid), back.i.payload.eq(rx.credit_o.payload),
            rx.credit_o.ready.eq(back.i.ready),
            tx.credit_i.valid.eq(back.o.valid), tx.credit_i.payload.eq(back.o.payload),
            back.o.ready.eq(tx.credit_i.ready),
        ]
    wiring.connect(m, rx_b.outputs[1], tx_b.inputs[0])      # the pass-through
    rng = random.Random(12)
    data = {1: [rng.getrandbits(16) for _ in range(50)],
            2: [rng.getrandbits(16) for _ in range(60)],
            3: [rng.getrandbits(32) for _ in range(40)]}
    out = {1: [], 2: [], 3: []}
    sim = Simulator(m)
    sim.add_clock(1e-8)
    for port, sid in [(tx_a.inputs[0], 1), (tx_a.inputs[1], 2), (tx_b.inputs[1], 3)]:
        sim.add_testbench(stream_source(port, data[sid], rng=random.Random(sid), p_stall=0.3),
                          background=True)
    for port, sid in [(rx_b.outputs[0], 1), (rx_c.outputs[0], 2), (rx_c.outputs[1], 3)]:
        sim.add_testbench(stream_sink(port, out[sid], count=len(data[sid]),
                                      rng=random.Random(10 + sid), p_stall=0.3,
                                      max_cycles=20_000))
    sim.run()
    assert out == data


# --- credits in frames of the opposite direction ------------------------------------------------

def simulate_duplex(ab, ba, items_ab, items_ba, *, max_payload=6, latency=5, flips_ab=(),
                    flips_ba=(), p_src=0.2, p_sink=0.2, seed=0, credit_interval=0,
                    credit_urgent=False, max_cycles=30_000):
    """A <-> B over two link models; the credits of each direction ride in credit frames of the
    other (no separate credit path). Returns per direction: wires, outputs, counters."""
    P = max_payload
    tx_a = LinkTx(ab, max_payload=P, reverse=ba, credit_interval=credit_interval,
                  credit_urgent=credit_urgent)
    rx_b = LinkRx(ab, max_payload=P, reverse=ba)
    tx_b = LinkTx(ba, max_payload=P, reverse=ab, credit_interval=credit_interval,
                  credit_urgent=credit_urgent)
    rx_a = LinkRx(ba, max_payload=P, reverse=ab)
    l_ab = LinkModel(latency=latency, flips=flips_ab)
    l_ba = LinkModel(latency=latency, flips=flips_ba)
    m = Module()
    for name, sub in [("tx_a", tx_a), ("rx_b", rx_b), ("tx_b", tx_b), ("rx_a", rx_a),
                      ("l_ab", l_ab), ("l_ba", l_ba)]:
        m.submodules[name] = sub
    from amaranth.lib import wiring
    for tx, link, rx in [(tx_a, l_ab, rx_b), (tx_b, l_ba, rx_a)]:
        wiring.connect(m, tx.o, link.i)
        wiring.connect(m, link.o, rx.i)
    wiring.connect(m, rx_a.credit_o, tx_a.credit_send)
    wiring.connect(m, rx_b.credit_recv, tx_b.credit_i)
    wiring.connect(m, rx_b.credit_o, tx_b.credit_send)
    wiring.connect(m, rx_a.credit_recv, tx_a.credit_i)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    rng = random.Random(seed)
    res = {"ab": Run(), "ba": Run()}
    sources = 0
    done = []
    for key, tx, rx, streams, items in [("ab", tx_a, rx_b, ab, items_ab),
                                        ("ba", tx_b, rx_a, ba, items_ba)]:
        run = res[key]
        run.out = [[] for _ in streams]
        run.out_cycles = [[] for _ in streams]
        run.tx_wire, run.rx_wire, run.max_level = [], [], [0] * len(streams)
        run.tx_cycles = []
        for k in range(len(streams)):
            source = stream_source(tx.inputs[k], items[k], rng=random.Random(rng.random()),
                                   p_stall=p_src)
            sources += 1

            async def src(ctx, source=source):
                await source(ctx)
                done.append(1)
            sim.add_testbench(src, background=True)
            sim.add_testbench(stream_sink(rx.outputs[k], run.out[k], count=10**9,
                                          rng=random.Random(rng.random()), p_stall=p_sink,
                                          on_word=lambda c, w, o=run.out_cycles[k]: o.append(c)),
                              background=True)
    settle = 2 * latency + 6 * (P + 2) + 20

    async def monitor(ctx):
        quiet = cycle = 0
        sigs = []
        for link, rx in [(l_ab, rx_b), (l_ba, rx_a)]:
            sigs += [link.i.valid, link.i.ready, link.i.payload, link.o.valid, link.o.payload,
                     rx.levels]
        while True:
            vals = (await ctx.tick().sample(*sigs))[2:]
            busy = len(done) < sources
            for j, key in enumerate(("ab", "ba")):
                iv, ir, ip, ov, op, levels = vals[6 * j:6 * j + 6]
                run = res[key]
                if iv and ir:
                    run.tx_wire.append(int(ip))
                    run.tx_cycles.append(cycle)
                if ov:
                    run.rx_wire.append(int(op))
                levels = payload_to_python(levels)
                run.max_level = [max(a, b) for a, b in zip(run.max_level, levels)]
                busy = busy or (iv and ir) or ov or any(levels)
            quiet = 0 if busy else quiet + 1
            cycle += 1
            if quiet >= settle:
                break
            assert cycle < max_cycles, "simulation did not settle"
        for key, rx, link in [("ab", rx_b, l_ab), ("ba", rx_a, l_ba)]:
            res[key].crc_errors = ctx.get(rx.crc_errors)
            res[key].seq_errors = ctx.get(rx.seq_errors)
            res[key].frames = ctx.get(rx.frames)
            res[key].corrupted = ctx.get(link.corrupted)
            res[key].cycles = cycle

    sim.add_testbench(monitor)
    sim.run()
    return res


DUPLEX_AB = [LinkStream(1, "activations", width=16, depth=10),
             LinkStream(2, "partial_sums", width=32, depth=12),
             LinkStream(5, "parameters", width=64, words=2, depth=14)]
DUPLEX_BA = [LinkStream(1, "errors", width=16, depth=9), LinkStream(3, "gradients", depth=13),
             LinkStream(4, "partial_errors", width=32, depth=11),
             LinkStream(6, "errors", width=8, depth=10), LinkStream(8, "gradients", depth=16)]


@pytest.mark.parametrize("credit_interval", [0, 12])
def test_duplex_credit_frames(credit_interval):
    rng = random.Random(31)
    items_ab = [_items(s, c, rng) for s, c in zip(DUPLEX_AB, (50, 40, 15))]
    items_ba = [_items(s, c, rng) for s, c in zip(DUPLEX_BA, (30, 30, 30, 30, 30))]
    # Slow consumers (ready 10% of the time): the buffers fill and only credits hold them.
    res = simulate_duplex(DUPLEX_AB, DUPLEX_BA, items_ab, items_ba, p_sink=0.9, seed=5,
                          credit_interval=credit_interval)
    full = 0
    for key, streams, rev, items in [("ab", DUPLEX_AB, DUPLEX_BA, items_ab),
                                     ("ba", DUPLEX_BA, DUPLEX_AB, items_ba)]:
        run = res[key]
        assert run.out == items
        assert all(lv <= s.depth for lv, s in zip(run.max_level, streams))
        full += sum(lv == s.depth for lv, s in zip(run.max_level, streams))
        assert (run.crc_errors, run.seq_errors) == (0, 0)
        sids = [s.sid for s in streams]
        schedule = golden.split_frames(run.tx_wire, sids, 6, len(rev))
        words = {s.sid: _words(s, it) for s, it in zip(streams, items)}
        assert run.tx_wire == golden.encode(words, schedule)          # bit-exact, both kinds
        assert run.rx_wire == run.tx_wire
        assert run.frames == sum(1 for sid, _ in schedule if sid is not None)
        # Credit totals only grow, and the last frame reports every word freed on the far side.
        totals = [t for sid, t in schedule if sid is None]
        starts = [k for k, (sid, _) in enumerate(schedule) if sid is None]
        if credit_interval:
            pos = [run.tx_cycles[sum(2 + (golden.credit_words(len(rev)) if sid is None else x)
                                     for sid, x in schedule[:k])] for k in starts]
            assert all(b - a >= credit_interval for a, b in zip(pos, pos[1:]))
            assert min(b - a for a, b in zip(pos, pos[1:])) < 2 * credit_interval
        assert totals and all(all(b >= a for a, b in zip(x, y))
                              for x, y in zip(totals, totals[1:]))
        other = items_ba if key == "ab" else items_ab
        assert totals[-1] == tuple(len(it) * s.words for it, s in zip(other, rev))
    assert full > 0         # some buffer was filled to the brim (and never beyond)


def test_urgent_credit_frames():
    """A long ``credit_interval`` (2,000 cycles) with small receive buffers: without
    ``credit_urgent`` a busy stream spends most of its time out of credit, waiting for the next
    credit frame; with it, a credit frame goes out as soon as half a buffer is freed. Same data,
    bit-exact, buffers never overflow, at least 4 times faster."""
    rng = random.Random(7)
    items_ab = [_items(s, c, rng) for s, c in zip(DUPLEX_AB, (60, 60, 20))]
    items_ba = [_items(s, c, rng) for s, c in zip(DUPLEX_BA, (10, 10, 10, 10, 10))]
    cycles = {}
    for urgent in (False, True):
        res = simulate_duplex(DUPLEX_AB, DUPLEX_BA, items_ab, items_ba, p_src=0.0, p_sink=0.0,
                              seed=3, credit_interval=2000, credit_urgent=urgent,
                              max_cycles=200_000)
        for key, streams, items in [("ab", DUPLEX_AB, items_ab), ("ba", DUPLEX_BA, items_ba)]:
            run = res[key]
            assert run.out == items
            assert all(lv <= s.depth for lv, s in zip(run.max_level, streams))
            assert (run.crc_errors, run.seq_errors) == (0, 0)
        cycles[urgent] = max(res["ab"].out_cycles[k][-1] for k in range(len(DUPLEX_AB)))
    print(cycles)
    assert cycles[True] * 4 < cycles[False]
    with pytest.raises(TypeError, match=r"^LinkTx credit_urgent must be a bool, not 1$"):
        LinkTx(DUPLEX_AB, reverse=DUPLEX_BA, credit_urgent=1)


def test_duplex_credit_frames_survive_bit_errors():
    # Random bit errors on both wires hit data and credit frames; credit totals are cumulative,
    # so a lost credit frame costs nothing once the next one arrives: the run completes.
    rng = random.Random(32)
    items_ab = [_items(s, c, rng) for s, c in zip(DUPLEX_AB, (60, 60, 20))]
    items_ba = [_items(s, c, rng) for s, c in zip(DUPLEX_BA, (30, 30, 30, 30, 30))]
    flips_ab = LinkModel(flip_rate=3e-4, seed=1, horizon=600).flip_list
    flips_ba = LinkModel(flip_rate=3e-4, seed=2, horizon=600).flip_list
    res = simulate_duplex(DUPLEX_AB, DUPLEX_BA, items_ab, items_ba, p_sink=0.3, seed=6,
                          flips_ab=flips_ab, flips_ba=flips_ba)
    hit_credit = 0
    for key, streams, rev, flips in [("ab", DUPLEX_AB, DUPLEX_BA, flips_ab),
                                     ("ba", DUPLEX_BA, DUPLEX_AB, flips_ba)]:
        run = res[key]
        sids = [s.sid for s in streams]
        spans = []
        k = 0
        for sid, x in golden.split_frames(run.tx_wire, sids, 6, len(rev)):
            length = golden.credit_words(len(rev)) if sid is None else x
            spans.append((k, k + length + 2, sid))
            k += length + 2
        bad = {w for w, _ in flips if w < len(run.tx_wire)}
        assert run.corrupted == len(bad) > 0
        hit_credit += sum(1 for a, b, sid in spans if sid is None and any(a <= w < b for w in bad))
        got = golden.receive(run.rx_wire, sids, 6, len(rev))
        for j, s in enumerate(streams):
            assert run.out[j] == golden.words_to_items(got.delivered[s.sid], s.words)
        assert (run.crc_errors, run.seq_errors) == (got.crc_errors, got.seq_errors)
        assert run.crc_errors > 0
        for start, sid, length, outcome in got.frames:
            if outcome == "ok":
                assert run.rx_wire[start:start + length + 2] == \
                    run.tx_wire[start:start + length + 2]
    assert hit_credit > 0


def test_lint_duplex(tmp_path):
    verilator_lint(LinkTx(DUPLEX_AB, max_payload=6, reverse=DUPLEX_BA, credit_interval=5),
                   "link_tx_credit", tmp_path)
    verilator_lint(LinkRx(DUPLEX_AB, max_payload=6, reverse=DUPLEX_BA), "link_rx_credit",
                   tmp_path)
    # Five streams (round robin over a non-power-of-two count) and a single one-bit stream.
    verilator_lint(LinkTx(DUPLEX_BA, max_payload=32, reverse=DUPLEX_AB), "link_tx5", tmp_path)
    verilator_lint(LinkRx(DUPLEX_BA, max_payload=32), "link_rx5", tmp_path)
    one = [LinkStream(9, width=1, depth=1)]
    verilator_lint(LinkTx(one, max_payload=1, reverse=one), "link_tx1", tmp_path)
    verilator_lint(LinkRx(one, max_payload=1, reverse=one), "link_rx1", tmp_path)


def test_on_serial_link_phy_model():
    """The framer on the PHY black box's user interface (its simulation loopback model)."""
    from amaranth.lib import wiring

    from fpdeep_hw.link.transceiver import SerialLinkPHY

    streams = [LinkStream(1, width=16, depth=12), LinkStream(2, width=64, depth=12)]
    tx, rx = LinkTx(streams, max_payload=8), LinkRx(streams, max_payload=8)
    phy = SerialLinkPHY(model_latency=6, model_depth=8, model_startup=10)
    m = Module()
    m.submodules.tx, m.submodules.rx, m.submodules.phy = tx, rx, phy
    wiring.connect(m, tx.o, phy.tx)
    wiring.connect(m, phy.rx, rx.i)
    wiring.connect(m, rx.credit_o, tx.credit_i)
    rng = random.Random(2)
    items = [_items(s, 60, rng) for s in streams]
    out = [[], []]
    sim = Simulator(m)
    sim.add_clock(1e-8)
    for k in range(2):
        sim.add_testbench(stream_source(tx.inputs[k], items[k], rng=random.Random(k),
                                        p_stall=0.3), background=True)
        sim.add_testbench(stream_sink(rx.outputs[k], out[k], count=60, rng=random.Random(5 + k),
                                      p_stall=0.5, max_cycles=10_000))
    sim.run()
    assert out == items
