"""Golden model of the parameter RAMs :class:`fpdeep_hw.memory.param_ram.LPRAM` and ``BPRAM``.

Contents are a ``(depth, lanes, kernel, kernel)`` integer array. The model replays writes and
reads by the cycle they happen in, with the block's ordering rule: a read issued in cycle ``t``
sees every write accepted in a cycle before ``t`` and none accepted in cycle ``t`` or later. A
word that first becomes valid on an output in cycle ``v`` was read in cycle ``v - 1``
(``LATENCY = 1``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ParamRAMModel", "lend_sequence"]


class ParamRAMModel:
    """Parameter RAM contents over time.

    Parameters
    ----------
    init : array ``(depth, lanes, kernel, kernel)``
        Initial contents.
    writes : list of ``(cycle, addr, set)``
        Writes in acceptance order, ``set`` a nested list or array ``(lanes, kernel, kernel)``.
    """

    LATENCY = 1

    def __init__(self, init, writes=()):
        self.init = np.array(init, dtype=np.int64)
        self.writes = sorted(writes, key=lambda w: w[0])

    @property
    def depth(self):
        return self.init.shape[0]

    def contents(self, cycle):
        """Contents seen by a read issued in ``cycle`` (writes accepted before ``cycle``)."""
        mem = self.init.copy()
        for w_cycle, addr, value in self.writes:
            if w_cycle >= cycle:
                break
            mem[addr] = np.asarray(value, dtype=np.int64)
        return mem

    def read(self, addr, cycle):
        """Weight set at ``addr`` returned by a read issued in ``cycle``, as nested lists."""
        return self.contents(cycle)[addr].tolist()

    def output(self, addr, first_valid_cycle):
        """Weight set at ``addr`` of a word that first became valid in ``first_valid_cycle``."""
        return self.read(addr, first_valid_cycle - self.LATENCY)


def lend_sequence(requests, depth):
    """``(addr, last)`` of every word the BPRAM lends for the ``(first, count)`` requests."""
    out = []
    for first, count in requests:
        for i in range(count):
            out.append(((first + i) % depth, int(i == count - 1)))
    return out
