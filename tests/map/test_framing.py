"""The framing model (:mod:`fpdeep_map.framing`): frames per image as ``LinkTx`` cuts them.

Figures from the co-simulation (``tests/sim/test_cluster.py``): ``tiny`` on two ``sim-node``
boards, the board's link (1 word per cycle): every 2-word pixel leaves in its own 4-word frame,
16 frames per image each way; at 0.2 Gb/s (1 word in 32 cycles) the backward link's first image
leaves in frames of 2, 2, 4, 8, 12, 4 words (EB of conv3: 16 pixels over 527 cycles).
"""

from pathlib import Path

import pytest

from fpdeep_map import costs
from fpdeep_map.board import load_board
from fpdeep_map.framing import LinkFrames, StreamTiming, frame_stream, link_frames, word_times
from fpdeep_map.mapper import map_network
from fpdeep_map.network import load_network

PIXELS = StreamTiming(items=16, item_bits=128, active=527)      # tiny's conv2 map, 8 lanes


def _lengths(frames):
    return [n for _, _, n in frames]


def test_word_times_of_wide_and_narrow_items():
    # a pixel of 128 bits is two words back to back, one cycle after the pixel
    assert word_times(PIXELS, 0)[:6] == [1, 2, 33, 34, 66, 67]
    assert len(word_times(PIXELS, 0)) == PIXELS.words == 32
    # 16-bit items one per cycle: a word every 4 items; 10 of them are 3 words, the last one
    # padded and sent with the last item
    narrow = StreamTiming(items=10, item_bits=16, active=10)
    assert narrow.words == 3
    assert word_times(narrow, 100) == [104, 108, 110]
    # 96-bit items: 1.5 words each, a word after the first, two after the second
    odd = StreamTiming(items=4, item_bits=96, active=40)
    assert word_times(odd, 0) == [1, 11, 12, 21, 31, 32]
    # items faster than one word per cycle queue up behind each other
    dense = StreamTiming(items=4, item_bits=192, active=4)
    assert word_times(dense, 0) == list(range(1, 13))


def test_frame_stream_cuts_at_a_dry_cycle():
    # a lone word: a frame of one word
    assert _lengths(frame_stream([[5]], rate=1.0)) == [1]
    # a word every 5 cycles: each its own frame (3 cycles on the wire, the bank free again
    # before the next word)
    assert _lengths(frame_stream([list(range(0, 50, 5))], rate=1.0)) == [1] * 10
    # a word every other cycle: both banks fill, and words that wait are taken back to back
    assert _lengths(frame_stream([list(range(0, 20, 2))], rate=1.0))[:3] == [1, 1, 2]
    # 70 words back to back on a fast link: 32, 32, 6
    assert _lengths(frame_stream([list(range(70))], rate=1.0)) == [32, 32, 6]
    # the first frame closes in the cycle of its 32nd word, the second in the first cycle
    # without one
    assert [c for c, _, _ in frame_stream([list(range(40))], rate=1.0)] == [31, 40]


def test_frame_stream_two_banks_on_a_slow_link():
    # 100 words waiting at once: full frames
    assert _lengths(frame_stream([[0] * 1 + list(range(1, 100))], rate=1 / 32)) == \
        [32, 32, 32, 4]
    # tiny's backward link at 0.2 Gb/s from idle: the first pixel leaves alone, the second is
    # gathered while the first is on the wire, then both banks are full and the pixels that
    # come meanwhile wait and leave together (measured 2, 2, 4, 8, 12, 4 words; the model's
    # evenly spaced pixels give 2, 2, 6, 8, 14)
    got = _lengths(frame_stream([word_times(PIXELS, 0)], rate=1 / 32))
    assert got == [2, 2, 6, 8, 14]


def test_frame_stream_round_robin():
    # two streams with words waiting: frames alternate between them
    a = list(range(0, 64))
    b = list(range(0, 64))
    frames = frame_stream([a, b], rate=1 / 4)
    assert [s for _, s, _ in frames][:4] == [0, 1, 0, 1]
    assert _lengths(frames) == [32, 32, 32, 32]


def test_frame_stream_rejects_a_bad_rate():
    with pytest.raises(ValueError, match=r"^link rate must be in \(0, 1\]"):
        frame_stream([[0]], rate=0)
    with pytest.raises(ValueError, match=r"^banks must be an integer of at least 2, not 1$"):
        frame_stream([[0]], rate=1.0, banks=1)


def test_frame_stream_more_banks_gather_further_ahead():
    # a word every other cycle on a fast link: with two banks the waiting words share frames,
    # with three the gatherer is a frame further ahead and each word leaves alone longer
    words = [list(range(0, 40, 2))]
    two = frame_stream(words, rate=1.0)
    three = frame_stream(words, rate=1.0, banks=3)
    assert len(three) > len(two)
    assert sum(n for _, _, n in three) == sum(n for _, _, n in two) == 20


def test_link_frames_fast_link_one_frame_per_pixel():
    # the board's link: 16 frames of 2 words per image (measured: 32 frames for 2 images)
    f = link_frames([PIXELS], rate=1.0, period=527)
    assert f == LinkFrames(frames=16.0, payload_words=32.0, overhead_words=2, full_frames=1.0)
    assert f.wire_words == 64.0
    assert f.payload_per_frame == 2.0


def test_link_frames_slow_link():
    # 0.2 Gb/s, one image per 1100.9 cycles (the full-frame bound), two banks: the link drains
    # each image before the next one's first pixel, which leaves alone; the other 15 follow in
    # one frame of 30 words
    f = link_frames([PIXELS], rate=1 / 32, period=1100.9, batch=4, engine_period=527)
    assert f.frames == pytest.approx(2.0)
    assert f.wire_words == pytest.approx(36.0)
    # three banks: a little fewer (the third bank holds a burst that two would have queued)
    three = link_frames([PIXELS], rate=1 / 32, period=1100.9, batch=4, engine_period=527,
                        banks=3)
    assert three.frames == pytest.approx(1.946, abs=0.001)


def test_link_frames_backlogged_link_sends_full_frames():
    # a producer far faster than the link: a frame of 32 words, with only 32 words per image
    fast = StreamTiming(items=64, item_bits=128, active=128)
    f = link_frames([fast], rate=1 / 32, period=128 * 34 * 32 / 128, batch=1)
    assert f.frames == pytest.approx(f.full_frames, rel=0.05)


def test_link_frames_boundary_restart():
    # backward streams start a mini-batch late and catch up at the engines' pace: the images
    # after the boundary come back to back and share frames, fewer per image than without
    late = StreamTiming(items=16, item_bits=128, active=527, boundary=True)
    base = link_frames([late], rate=1 / 32, period=1100.9, batch=4, engine_period=527)
    held = link_frames([late], rate=1 / 32, period=1100.9, batch=4, boundary=1728,
                       engine_period=527)
    assert held.frames < base.frames
    # the boundary stretches a mini-batch only by what the engines' slack cannot hide
    assert held.payload_words == base.payload_words == 32


def test_link_frames_window_for_large_images():
    # beyond the budget the middle of the image is simulated: the same frames per word
    big = StreamTiming(items=4000, item_bits=128, active=40_000)
    whole = link_frames([big], rate=1.0, period=40_000, budget=100_000)
    window = link_frames([big], rate=1.0, period=40_000, budget=2_000)
    assert window.frames == pytest.approx(whole.frames, rel=0.02)
    assert window.frames == pytest.approx(4000)


def test_mapper_wire_words_follow_the_framing():
    net = load_network("tiny")
    # the board's link: 64 payload and overhead words per image each way, and the credit frames
    plan = map_network(net, load_board("sim-node"), 2, batch=4, max_row_lanes=1, split="layers")
    assert costs.LINK_TX_BANKS == 3
    for lk in plan.links:
        assert lk.bits_per_image == 32 * 64
        assert 64 * 64 < lk.wire_bits_per_image < 64.5 * 64
    s = plan.summary
    assert s["max_link_gbps"] > s["max_link_gbps_full_frames"]
    # the link bound still counts full frames: 34 words per image at 32 cycles each
    slow = map_network(net, load_board("sim-node").with_overrides(link_gbps=0.2), 2, batch=4,
                       max_row_lanes=1, split="layers")
    assert slow.summary["cycles_per_image_steady"] == pytest.approx(
        34 * 32 / (1 - costs.LINK_CREDIT_FRAME_WORDS * 32 / costs.LINK_CREDIT_INTERVAL_CYCLES),
        abs=0.01)
    # three staging banks (as built): about 2 frames per image, 36 words, and 0.4 of credit
    # frames; the backward errors start a mini-batch a little late (measured with three banks:
    # see docs/mapping.md section 5); node 0's conv2 output leaves at node 0's own pace
    # within a mini-batch (36.30 when every producer kept the period); with the FC's master
    # copy off chip the errors start a mini-batch 59 cycles later still, time enough for the
    # link to drain: the backward stream's frames as the forward one's (36.77 with the master
    # on chip)
    assert [lk.wire_bits_per_image / 64 for lk in slow.links] == pytest.approx(
        [36.40, 36.40], abs=0.01)


def test_borrowed_icp_slice_errors_leave_in_rows():
    """``icplend`` (tiny on 3 ``tiny-test-b24d90``, an ICP slice of conv2 lent to node 1): the
    slice's weight-stationary EB drains conv1's output errors a row of 8 pixels at a time,
    which share frames. Link 1 -> 0 measured 211.0 wire words per image in the co-simulation
    (2 images, B = 2; ``docs/mapping.md`` section 5); modelled one pixel at a time it was
    273.5."""
    board = load_board(str(Path(__file__).parents[1] / "sim" / "data" / "tiny-test-b24d90.yaml"))
    plan = map_network(load_network("tiny"), board, 3, batch=2, ocp_threshold=1)
    assert [(lp.layer, lp.lender, lp.borrower) for q in plan.node_plans for lp in q.bpram] == \
        [("conv2", 2, 1)]
    back = next(lk for lk in plan.links if (lk.src, lk.dst) == (1, 0))
    assert back.wire_bits_per_image / 64 == pytest.approx(209.5)
    assert 211.0 / (back.wire_bits_per_image / 64) - 1 < 0.01


def test_word_times_drained_bursts_with_spacing():
    # the whole image in one burst, an item every 4 cycles, ending where `active` ends: a
    # weight-stationary EB draining its sums after the image's last weight set
    drained = StreamTiming(items=4, item_bits=64, active=100, burst=4, spacing=4, drained=True)
    assert word_times(drained, 0) == [85, 89, 93, 97]
    # the same burst from the image's start; spacing 1 is the old burst
    assert word_times(StreamTiming(items=4, item_bits=64, active=100, burst=4, spacing=4),
                      0) == [1, 5, 9, 13]
    assert word_times(StreamTiming(items=4, item_bits=64, active=100, burst=4), 0) == [1, 2, 3, 4]
    # 4-word pixels every 4 cycles are back to back on the link: one frame of 16 words
    wide = StreamTiming(items=4, item_bits=256, active=100, burst=4, spacing=4, drained=True)
    assert _lengths(frame_stream([word_times(wide, 0)], rate=1.0)) == [16]


def _split_plan(name):
    configs = {"twochains": ("digits", "tiny-test", 3), "ocp2": ("tiny", "sim-node", 2)}
    net, board, nodes = configs[name]
    return map_network(load_network(net), load_board(board), nodes, batch=4, max_row_lanes=1)


def test_borrowed_ocp_slice_partial_errors_leave_in_one_burst():
    """``twochains`` (digits on 3 ``tiny-test``, conv2 cut by output channels, node 1 keeps the
    weights of nodes 0 and 2): node 2's weight-stationary EB sums conv1's partial errors over
    every weight set of the image and drains the whole map at the end, a 4-word pixel every
    G = 4 cycles, in 8 full frames per image; its weight-stationary PG sends one gradient set
    at the end of each of its 20 sweeps. The co-simulation measured 481.25 wire words per image
    on link 2 -> 1 over the steady images (12 images, B = 4; ``docs/mapping.md`` section 5;
    447.25 when the position-outer PG sent all its sets at the end of the image); modelled a
    pixel at a time (before) it was 557.05."""
    plan = _split_plan("twochains")
    assert sorted((lp.layer, lp.lender, lp.borrower) for q in plan.node_plans
                  for lp in q.bpram) == [("conv2", 1, 0), ("conv2", 1, 2)]
    back = next(lk for lk in plan.links if (lk.src, lk.dst) == (2, 1))
    assert back.wire_bits_per_image / 64 == pytest.approx(479.95, abs=0.01)
    assert abs(481.25 / (back.wire_bits_per_image / 64) - 1) < 0.01
    # node 1 adds its own partial errors (a normal EB) and passes them on at its own pace:
    # the next hop is not one burst (measured 597.12)
    on = next(lk for lk in plan.links if (lk.src, lk.dst) == (1, 0))
    assert abs(597.12 / (on.wire_bits_per_image / 64) - 1) < 0.05


def test_ocp_partial_errors_leave_a_row_at_a_time():
    """``ocp2`` (tiny on 2 ``sim-node``, conv2 cut by output channels): node 1's EB emits conv1's
    partial errors a row of the 8 x 8 map at a time, a 2-word pixel every R x G = 4 cycles
    (traced: the link's pace for 2-word frames, so a row backs up behind any other frame and
    shares frames). The co-simulation measured 295.00 wire words per image on link 1 -> 0 over
    the steady images (12 images, B = 4; ``docs/mapping.md`` section 5); with the pixels
    spread over the period (before) the model gave 316.38."""
    plan = _split_plan("ocp2")
    back = next(lk for lk in plan.links if (lk.src, lk.dst) == (1, 0))
    assert back.wire_bits_per_image / 64 == pytest.approx(292.38, abs=0.01)
    assert abs(295.00 / (back.wire_bits_per_image / 64) - 1) < 0.01
