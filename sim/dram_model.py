"""Cycle-level model of an external memory (DRAM behind its controller) on the burst port.

Serves the burst port of :class:`fpdeep_hw.memory.offchip_act_ram.OffchipActRAM` (or of any
:class:`~fpdeep_hw.memory.offchip_act_ram.OffchipFIFO`: the off-chip mask and argmax stores)
(``MEMORY_PORTS`` there: ``aw``/``w`` write bursts, ``b`` write acknowledgements, ``ar`` read
requests, ``r`` read data) from an async testbench, in simulation, where the board has the
memory controller black box (``MemoryControllerBlackBox``).

Behaviour (deterministic for a given ``seed``):

- **Write**: a burst address is taken on ``aw`` (``ready`` dropped at random with
  probability ``p_stall``; at most ``queue`` bursts waiting), then its ``burst`` words on ``w``
  (one per cycle at most, when a token is available and not stalled at random). The burst is
  written to the storage ``latency`` cycles after its last word (``latency`` an int, or a
  ``(lo, hi)`` range drawn per burst with the seed), and acknowledged on ``b`` from then on, in
  order.
- **Read**: a burst address is taken on ``ar`` (random stalls, at most ``queue`` waiting); its
  words are read from the storage when the request is served, ``latency`` cycles after it was
  taken (never before the previous read's last word), and delivered on ``r`` one per cycle at
  most, when a token is available, honouring ``ready``.
- **Bandwidth**: ``words_per_cycle`` (a fraction up to 2) tokens are added per cycle (at most
  2 held); each word written or read takes one: reads and writes share the memory's bandwidth.
- **Checks** (``AssertionError``): a read of an address never written, or of a burst whose
  write is not yet acknowledged (the reader must wait for ``b``); a write burst overlapping a
  read not yet served (the writer must not reuse a slot before its data came back); addresses
  outside ``words``.

Counters (attributes): ``words_written``, ``words_read``, ``bursts_written``, ``bursts_read``,
``max_outstanding_reads``.

Test: ``tests/hw/test_offchip_act_ram.py``. Documentation: ``docs/hw-memory.md``, "Off-chip
Act-RAM".
"""

from __future__ import annotations

import random
from collections import deque
from fractions import Fraction

__all__ = ["DRAMModel"]


class DRAMModel:
    """External memory model for the burst port ``port`` (see the module docstring).

    Parameters
    ----------
    port
        The DUT's memory port interface (members ``aw``, ``w``, ``b``, ``ar``, ``r``).
    burst : int
        Words per burst.
    words : int
        Size of the memory in words (addresses ``0 .. words - 1``).
    latency : int or (int, int)
        Cycles from a request (the last word of a write burst, a read request) to its service.
    words_per_cycle : Fraction, float or int
        Bandwidth in words per cycle, in ``(0, 2]``.
    p_stall : float
        Probability of dropping ``ready`` on ``aw``, ``w`` and ``ar`` each cycle, and of holding
        back ``b`` and ``r`` for a cycle.
    queue : int
        Requests that may wait per direction.
    seed : int
    """

    def __init__(self, port, *, burst, words, latency=20, words_per_cycle=1, p_stall=0.0,
                 queue=4, seed=0):
        if isinstance(latency, int):
            latency = (latency, latency)
        lo, hi = latency
        if not 1 <= lo <= hi:
            raise ValueError(f"DRAMModel latency must be at least 1, not {latency!r}")
        rate = Fraction(words_per_cycle).limit_denominator(4096)
        if not 0 < rate <= 2:
            raise ValueError(f"DRAMModel words_per_cycle must be in (0, 2], "
                             f"not {words_per_cycle!r}")
        self.port, self.burst, self.words = port, burst, words
        self.latency, self.rate, self.p_stall, self.queue = (lo, hi), rate, p_stall, queue
        self.rng = random.Random(seed)
        self.storage = {}
        self.words_written = self.words_read = 0
        self.bursts_written = self.bursts_read = 0
        self.max_outstanding_reads = 0

    def load(self, words):
        """Preload the storage with ``{address: int}`` (e.g. an
        :class:`~fpdeep_hw.node.update.OffchipWeightUpdate`'s initial master copy,
        ``init_words()``): what the host writes before training starts."""
        for addr, v in words.items():
            if not 0 <= addr < self.words:
                raise ValueError(f"DRAMModel: preload address {addr} outside the memory of "
                                 f"{self.words} words")
            self.storage[addr] = int(v)

    def _lat(self):
        return self.rng.randint(*self.latency)

    def _check(self, addr):
        if not 0 <= addr <= self.words - self.burst or addr % self.burst:
            raise AssertionError(f"DRAMModel: burst address {addr} outside the memory of "
                                 f"{self.words} words or not aligned to {self.burst}")

    async def run(self, ctx):
        """The model as an async testbench (add with ``background=True``)."""
        p, B = self.port, self.burst
        tokens = Fraction(2)
        aw_q = deque()          # burst addresses taken, waiting for / receiving their words
        w_buf = []              # words of the burst at the head of aw_q
        commits = deque()       # (time, addr, words): written at time, then acknowledged
        unacked = set()         # burst addresses written but not yet acknowledged
        ar_q = deque()          # (time taken, addr)
        r_out = deque()         # words being delivered
        r_ready_at = 0          # the next read is served no earlier than this
        pending_reads = set()   # addresses of reads taken and not yet served
        t = 0
        outs = (p.aw.ready, p.w.ready, p.ar.ready, p.b.valid, p.r.valid, p.r.payload)
        last = [None] * len(outs)
        while True:
            tokens = min(tokens + self.rate, Fraction(2))
            # writes reaching the storage
            while commits and commits[0][0] <= t and commits[0][3] is False:
                when, addr, words, _ = commits.popleft()
                for k, w in enumerate(words):
                    self.storage[addr + k] = w
                commits.appendleft((when, addr, words, True))
                break
            # read service
            if not r_out and ar_q and ar_q[0][0] <= t:
                _, addr = ar_q.popleft()
                pending_reads.discard(addr)
                for k in range(B):
                    if addr + k not in self.storage:
                        raise AssertionError(f"DRAMModel: read of address {addr + k}, never "
                                             f"written")
                r_out.extend(self.storage[addr + k] for k in range(B))
                self.bursts_read += 1
            b_valid = bool(commits) and commits[0][3] is True and \
                self.rng.random() >= self.p_stall
            r_valid = bool(r_out) and tokens >= 1 and self.rng.random() >= self.p_stall
            aw_ready = len(aw_q) < self.queue and self.rng.random() >= self.p_stall
            w_ready = bool(aw_q) and tokens >= 1 + (1 if r_valid else 0) and \
                self.rng.random() >= self.p_stall
            ar_ready = len(ar_q) < self.queue and self.rng.random() >= self.p_stall
            # drive only what changed: a ``ctx.set`` costs the simulator a signal update even
            # when the value is the same, and an idle port would otherwise pay six every cycle
            out = (aw_ready, w_ready, ar_ready, b_valid, r_valid, r_out[0] if r_out else 0)
            for k, (sig, v) in enumerate(zip(outs, out)):
                if v != last[k]:
                    ctx.set(sig, v)
                    last[k] = v
            (_, _, aw_v, aw_a, w_v, w_d, ar_v, ar_a, r_rdy, b_rdy) = await ctx.tick().sample(
                p.aw.valid, p.aw.payload, p.w.valid, p.w.payload, p.ar.valid, p.ar.payload,
                p.r.ready, p.b.ready)
            if b_valid and b_rdy:
                _, addr, _, _ = commits.popleft()
                unacked.discard(addr)
            if r_valid and r_rdy:
                r_out.popleft()
                tokens -= 1
                self.words_read += 1
                if not r_out:
                    r_ready_at = t + 1
            if aw_ready and aw_v:
                self._check(aw_a)
                if aw_a in pending_reads:
                    raise AssertionError(f"DRAMModel: write burst at {aw_a} while a read of it "
                                         f"is not served yet")
                aw_q.append(aw_a)
            if w_ready and w_v:
                tokens -= 1
                self.words_written += 1
                w_buf.append(int(w_d))
                if len(w_buf) == B:
                    addr = aw_q.popleft()
                    commits.append((t + self._lat(), addr, w_buf, False))
                    unacked.add(addr)
                    w_buf = []
                    self.bursts_written += 1
            if ar_ready and ar_v:
                self._check(ar_a)
                if ar_a in unacked:
                    raise AssertionError(f"DRAMModel: read of burst {ar_a} before its write "
                                         f"was acknowledged")
                ar_q.append((max(t + self._lat(), r_ready_at), ar_a))
                pending_reads.add(ar_a)
                self.max_outstanding_reads = max(self.max_outstanding_reads, len(ar_q))
            t += 1
