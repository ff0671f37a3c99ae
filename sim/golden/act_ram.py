"""Golden model of the Act-RAM (:mod:`fpdeep_hw.memory.act_ram`), cycle by cycle.

The model reproduces the block's ports every cycle: ``i.ready``, ``o.valid``, ``o.payload``,
``level``, ``full`` and ``empty``, given ``i.valid``, ``i.payload`` and ``o.ready`` of that cycle.
It keeps the stored words as a queue (no pointers): the head of the queue is the word presented on
``o`` once it has been fetched, which takes one cycle after it is stored (two cycles of latency
from the write transfer to ``o.valid``).
"""

from __future__ import annotations

from collections import deque

__all__ = ["ActRAMModel", "act_ram_order"]


class ActRAMModel:
    """Cycle model of :class:`fpdeep_hw.memory.act_ram.ActRAM` with capacity ``depth``."""

    LATENCY = 2

    def __init__(self, depth):
        self.depth = depth
        self.words = deque()       # stored words, oldest first (incl. the one presented)
        self.o_valid = False       # the oldest word is in the output register

    def outputs(self):
        """Port values of the current cycle that do not depend on this cycle's inputs."""
        level = len(self.words)
        return {
            "i_ready": level != self.depth,
            "o_valid": self.o_valid,
            "o_payload": self.words[0] if self.o_valid else None,
            "level": level,
            "full": level == self.depth,
            "empty": level == 0,
        }

    def step(self, i_valid, i_payload, o_ready):
        """Return this cycle's outputs (see :meth:`outputs`), then advance one clock edge."""
        out = self.outputs()
        do_write = bool(i_valid) and out["i_ready"]
        do_read = self.o_valid and bool(o_ready)
        unfetched = len(self.words) - int(self.o_valid)
        fetch = unfetched > 0 and (not self.o_valid or bool(o_ready))
        if do_read:
            self.words.popleft()
        if do_write:
            self.words.append(i_payload)
        self.o_valid = fetch or (self.o_valid and not do_read)
        out["do_write"] = do_write
        out["do_read"] = do_read
        return out


def act_ram_order(words):
    """Output of the Act-RAM for the input ``words``: the same words in the same order."""
    return list(words)
