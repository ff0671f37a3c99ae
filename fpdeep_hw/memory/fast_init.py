"""Memories with large initial contents, built fast (build-time cost only; same circuit).

``amaranth.lib.memory.Memory(init=...)`` checks and converts every initial word through
``Const.cast`` (``MemoryData.Init.__setitem__``: about 20 us a word). A VGG-16 node's weight
banks hold close to a million words, 20 s of its build. :func:`memory` builds the memory with
no contents and fills the word list in place when the shape is a plain signed or unsigned
:class:`~amaranth.hdl.Shape` and every word is an integer in its range -- exactly what Amaranth
would have stored -- and otherwise assigns ``init`` the ordinary way (Amaranth's conversion,
checks and messages). Test: ``tests/hw/test_param_ram.py::test_fast_init_equals_amaranths``.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Shape, ShapeCastable
from amaranth.lib.memory import Memory

__all__ = ["memory"]


def memory(*, shape, depth, init, attrs=None):
    """``Memory(shape=shape, depth=depth, init=init, attrs=attrs)``."""
    words = init.tolist() if isinstance(init, np.ndarray) else list(init)
    if (isinstance(shape, Shape) and not isinstance(shape, ShapeCastable) and len(words) <= depth
            and all(type(v) is int for v in words)):
        lo, hi = ((-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed
                  else (0, (1 << shape.width) - 1))
        if not words or (min(words) >= lo and max(words) <= hi):
            mem = Memory(shape=shape, depth=depth, init=[], attrs=attrs, src_loc_at=1)
            mem.init._elems[:len(words)] = words   # aliased with the raw words (plain shape)
            return mem
    return Memory(shape=shape, depth=depth, init=words, attrs=attrs, src_loc_at=1)
