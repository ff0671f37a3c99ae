"""Golden models of the weight-set plumbing :mod:`fpdeep_hw.node.sets` (SetConcat, SetRoute).

Test: ``tests/hw/test_sets.py``.
"""

__all__ = ["set_concat", "set_route"]


def set_concat(inputs, counts):
    """The output of ``SetConcat(counts)`` for the per-input item lists ``inputs`` (each a whole
    number of images): per image ``counts[0]`` items of input 0, then ``counts[1]`` of input 1..."""
    images = len(inputs[0]) // counts[0]
    for items, c in zip(inputs, counts):
        if len(items) != images * c:
            raise ValueError("set_concat: inputs of different image counts")
    out = []
    for i in range(images):
        for items, c in zip(inputs, counts):
            out += items[i * c:(i + 1) * c]
    return out


def set_route(items, ranges, addr=lambda item: item["addr"]):
    """The outputs of ``SetRoute(ranges)``: per range, the items whose address it holds, in
    order."""
    out = [[] for _ in ranges]
    for it in items:
        a = addr(it)
        k = next((k for k, (lo, hi) in enumerate(ranges) if lo <= a < hi), None)
        if k is None:
            raise ValueError(f"set_route: address {a} is in no range")
        out[k].append(it)
    return out
