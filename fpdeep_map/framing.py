"""Frames on a link direction as ``LinkTx`` builds them: how many per image, and how full.

The framer (``fpdeep_hw/link/framer.py``, ``LinkTx``) gathers the words of one stream into a
staging bank one per cycle until ``max_payload`` words, or until its input has no word in a
cycle (the frame is cut short there); its staging banks (``costs.LINK_TX_BANKS``, three as
built) are used in turn, one being gathered while another is on the wire (header, payload, CRC
trailer). A link that keeps up with its producers therefore
sends each burst of words as it comes, in a short frame, and only a backlogged link sends full
frames. This module predicts the frames from how the producing engines emit their items and
from the link rate, by a small deterministic event simulation of the framer (pure Python; the
mapper must not import Amaranth):

- **Producer.** A stream carries ``items`` items per image of ``item_bits`` bits each (a pixel
  of ``C`` lanes, a weight set), emitted evenly spaced over the producer's ``active`` cycles of
  each image (``floor(k * active / items)`` after the image's start), or ``burst`` at a time,
  ``spacing`` cycles apart (the output errors behind a max-pool leave two rows of the map at a
  time; a borrowed slice's weight-stationary EB drains its errors after the image's last weight
  set, a pixel every ``G`` cycles: an ICP slice's input errors a row at a time, an OCP slice's
  partial errors the whole map at once), the bursts evenly spaced.
- **Packer** (``fpdeep_hw/link/packer.py``): items are packed densely into 64-bit words; a word
  leaves one cycle after the item that completes it, at most one word per cycle, and the image's
  last word is padded and leaves with its last item. A pixel of 128 bits is two words back to
  back; four 16-bit items make one word.
- **Images.** Image ``i`` of a mini-batch of ``B`` starts every ``period`` cycles (every
  ``pace`` cycles for a producer that runs ahead within the mini-batch); a stream
  that waits for the update at a mini-batch boundary (errors, partial errors, gradients: the
  backward pass waits for the last layer's update, ``docs/mapping.md`` section 6) starts the
  batch's first image ``boundary`` cycles late and the next ones as soon as the engines
  allow (``engine_period`` after the previous one) until they are back on the period.
- **Framer.** Round-robin among the streams with a word waiting, the gatherer takes words of the
  chosen stream one per cycle while the next one is there by then, up to ``max_payload``; the
  frame's bank goes on the wire the cycle after it closes once the sender is free, and takes
  ``(length + 2) / rate`` cycles (``rate``: link words per cycle); the bank is free for the
  frame ``banks`` later after that. Credits (receive buffers of ``LINK_RECEIVE_BUFFER_WORDS``, many
  frames) and credit frames are left out here (the mapper adds the credit frames).

:func:`link_frames` simulates a few mini-batches from an idle link and counts the frames of the
last one (the steady state: start-up excluded, the boundary included). Images of more than
``budget`` words are simulated over a window of the image's middle instead (a few thousand
words; the framing inside an image settles within a few frames), the window's frames per word
scaling to the image.

Test: ``tests/map/test_framing.py``; against the co-simulation: ``tests/sim/test_cluster.py``.
Documentation: ``docs/mapping.md`` section 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["StreamTiming", "LinkFrames", "word_times", "frame_stream", "link_frames"]

WORD_BITS = 64


@dataclass(frozen=True)
class StreamTiming:
    """How one link stream's producer emits an image.

    Parameters
    ----------
    items : int
        Items per image (pixels of the map, weight sets).
    item_bits : int
        Bits of one item (the packer packs them densely into 64-bit words).
    active : float
        Cycles over which the producer emits an image's items, evenly spaced.
    boundary : bool
        The producer waits for the update at every mini-batch boundary (backward streams).
    burst : int
        Items emitted together, one per cycle (a row of pixels); the bursts are evenly spaced.
    spacing : int
        Cycles from one item of a burst to the next (default 1; a weight-stationary EB drains a
        pixel every ``G`` cycles, one word of ``S`` lanes gathered per cycle).
    drained : bool
        Each burst ends where its share of ``active`` ends instead of starting where it starts
        (results drained after the computation that makes them: a weight-stationary EB's).
    pace : float, optional
        Cycles from one image's start to the next within a mini-batch for a producer that runs
        ahead of the period (a node that is not the bottleneck); default: the period.
        Backward streams keep their schedule (**Images** in the module docstring).
    """

    items: int
    item_bits: int
    active: float
    boundary: bool = False
    burst: int = 1
    pace: float | None = None
    spacing: int = 1
    drained: bool = False

    @property
    def words(self):
        """64-bit words per image (the packer pads the image's last word)."""
        return -(-self.items * self.item_bits // WORD_BITS)


@dataclass(frozen=True)
class LinkFrames:
    """Frames of one link direction per image, steady state (see :func:`link_frames`)."""

    frames: float               # frames per image
    payload_words: float        # payload words per image
    overhead_words: int         # header + trailer words of every frame
    full_frames: float          # frames per image if every frame were full

    @property
    def wire_words(self):
        """Payload and frame overhead per image (credit frames not included)."""
        return self.payload_words + self.overhead_words * self.frames

    @property
    def payload_per_frame(self):
        return self.payload_words / self.frames if self.frames else 0.0


def word_times(timing, start, first=0, last=None):
    """Cycles (integers, increasing) at which the words of items ``first .. last - 1`` of an
    image started at ``start`` are on the transmitter's input (the packer's output)."""
    n, b, g = timing.items, timing.item_bits, max(1, timing.burst)
    groups = -(-n // g)
    last = n if last is None else last
    out = []
    prev = -math.inf
    done = first * b // WORD_BITS        # words completed before item `first`
    for k in range(first, last):
        j = k // g + (1 if timing.drained else 0)
        t = start + math.floor(j * timing.active / groups) + k % g * timing.spacing + 1
        if timing.drained:
            t = max(start + 1, t - min(g, n - k // g * g) * timing.spacing)
        bits = (k + 1) * b
        if k == n - 1:
            bits = -(-bits // WORD_BITS) * WORD_BITS
        now = bits // WORD_BITS
        for _ in range(now - done):
            prev = max(t, prev + 1)
            out.append(prev)
        done = now
    return out


def frame_stream(arrivals, *, rate, max_payload=32, overhead=2, banks=2):
    """Frames ``LinkTx`` sends for words arriving at the given cycles.

    ``arrivals``: per stream, the increasing cycles at which its words are on the transmitter's
    input; ``banks``: the transmitter's staging banks, used in turn. Returns ``[(close_cycle,
    stream, length)]`` in the order the frames are gathered.
    """
    if not 0 < rate <= 1:
        raise ValueError(f"link rate must be in (0, 1] words per cycle, not {rate!r}")
    if not isinstance(banks, int) or banks < 2:
        raise ValueError(f"banks must be an integer of at least 2, not {banks!r}")
    n = len(arrivals)
    idx = [0] * n
    frames = []
    bank_free = [0.0] * banks   # cycle from which each staging bank can be gathered again
    sender_free = 0.0
    close_prev = -1
    rr = n - 1
    k = 0
    while True:
        waiting = [arrivals[s][idx[s]] for s in range(n) if idx[s] < len(arrivals[s])]
        if not waiting:
            return frames
        t = max(close_prev + 1, math.ceil(bank_free[k % banks]), min(waiting))
        # round robin: the first stream after the last one served with a word by cycle t
        s = next(s for s in ((rr + off) % n for off in range(1, n + 1))
                 if idx[s] < len(arrivals[s]) and arrivals[s][idx[s]] <= t)
        rr = s
        words, cur = arrivals[s], t
        idx[s] += 1
        count = 1
        while count < max_payload and idx[s] < len(words) and words[idx[s]] <= cur + 1:
            cur += 1
            count += 1
            idx[s] += 1
        # closed in the cycle of the last word when full, else in the first cycle without one
        close = cur if count == max_payload else cur + 1
        start = max(close + 1, sender_free)
        end = start + (count + overhead) / rate
        sender_free = end
        bank_free[k % banks] = end
        frames.append((close, s, count))
        close_prev = close
        k += 1


def _starts(timing, images, *, period, batch, boundary, engine_period):
    """Start cycle of each image's emission (see the module docstring, **Images**)."""
    batch_len = batch * period + max(0.0, boundary - batch * (period - engine_period))
    out = []
    for i in range(images):
        m, j = divmod(i, batch)
        base = m * batch_len
        if not timing.boundary:
            out.append(base + j * (timing.pace if timing.pace else batch_len / batch))
        elif j == 0:
            out.append(base + boundary)
        else:
            out.append(max(base + j * period, out[-1] + engine_period))
    return out, batch_len


def link_frames(streams, *, rate, period, batch=1, boundary=0.0, engine_period=None,
                max_payload=32, overhead=2, banks=2, budget=20_000):
    """Frames per image of one link direction in the steady state.

    Parameters
    ----------
    streams : list of StreamTiming
        The streams of the direction.
    rate : float
        Link words per cycle, in (0, 1].
    period : float
        Cycles per image within a mini-batch (the plan's steady period).
    batch : int
        Images per mini-batch.
    boundary : float
        Cycles the backward streams' first image of a mini-batch starts late.
    engine_period : float, optional
        The engines' cycles per image (how fast late images catch up; default ``period``).
    max_payload, overhead, banks : int
        The framer's largest payload, header + trailer words, staging banks.
    budget : int
        Most words per image simulated in full; larger images are simulated over a window.

    Returns
    -------
    LinkFrames
        Mini-batches (at least three, and six images) are simulated from an idle link; the
        frames closed from the last one's start on, per payload word, times the payload words
        of an image, give the frames per image (never fewer than full frames would need).
    """
    streams = [s for s in streams if s.items > 0 and s.item_bits > 0]
    payload = sum(s.words for s in streams)
    full = sum(-(-s.words // max_payload) for s in streams)
    if not streams:
        return LinkFrames(0.0, 0.0, overhead, 0.0)
    engine_period = period if engine_period is None else min(engine_period, period)
    if payload > budget:
        return _window(streams, rate=rate, max_payload=max_payload, overhead=overhead,
                       banks=banks, budget=budget, payload=payload, full=full)
    # mini-batches to simulate: enough for a few whole periods of the link to settle
    per_batch = max(1, batch)
    batches = max(3, -(-6 // per_batch))
    if per_batch * batches * payload > 20 * budget:
        batches = 2
    images = per_batch * batches
    arrivals = []
    for s in streams:
        starts, batch_len = _starts(s, images, period=period, batch=per_batch,
                                    boundary=boundary, engine_period=engine_period)
        words = []
        for t in starts:
            words.extend(word_times(s, t))
        # a producer ahead of the link keeps its order: words never arrive out of order
        for j in range(1, len(words)):
            words[j] = max(words[j], words[j - 1] + 1)
        arrivals.append(words)
    frames = frame_stream(arrivals, rate=rate, max_payload=max_payload, overhead=overhead,
                          banks=banks)
    # the last mini-batch: the frames closed from its start on (a link that fell behind also
    # sends the previous batch's tail then, in full frames), per word carried
    lo = (batches - 1) * batch_len
    last = [n for c, _, n in frames if c >= lo]
    per_image = payload * len(last) / sum(last) if last else float(full)
    return LinkFrames(max(per_image, float(full)), float(payload), overhead, float(full))


def _window(streams, *, rate, max_payload, overhead, banks, budget, payload, full):
    """Large images: a window of ``budget`` words from the middle of one image, all streams
    over the same cycles, frames counted over its second half (frames per word scale)."""
    span = max(s.active for s in streams)
    frac = budget / payload
    lo_t = span * (0.5 - frac / 2)
    arrivals = []
    for s in streams:
        a = int(s.items * (0.5 - frac / 2))
        b = max(a + 1, min(s.items, int(math.ceil(s.items * (0.5 + frac / 2)))))
        arrivals.append(word_times(s, 0, a, b))
    frames = frame_stream(arrivals, rate=rate, max_payload=max_payload, overhead=overhead,
                          banks=banks)
    mid = lo_t + span * frac / 2
    half = [n for c, _, n in frames if c >= mid]
    if not half or sum(half) == 0:
        return LinkFrames(float(full), float(payload), overhead, float(full))
    per_word = len(half) / sum(half)
    return LinkFrames(max(float(full), payload * per_word), float(payload), overhead,
                      float(full))
