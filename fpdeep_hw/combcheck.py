"""A fast, exact combinational-cycle check for Amaranth netlists (used by the node build).

``amaranth.hdl._ir.build_netlist`` ends with ``Netlist.check_comb_cycles()``: a depth-first
search over every net, one output bit at a time. For an arithmetic or comparison operator, a
variable part-select, a case match or an asynchronous read port, *every* output bit depends on
*every* input bit, so the search walks ``width x input width`` edges per cell; in a VGG-16 node
(thousands of multipliers, 48-bit adder trees) that is 93 % of the conversion time (profiled
with py-spy: minutes, not seconds).

:func:`check_comb_cycles` gives the same verdict with one search per such cell: all its output
bits share one edge set, so bit ``k`` has a combinational cycle through it exactly when bit 0
has (a path back to bit ``k`` reaches the same inputs as one back to bit 0), and the search
visits bit 0 as the representative of the cell. Bitwise operators, ``~``, multiplexers,
priority matches and assignment lists keep per-bit edges, as in Amaranth. The search is
iterative (no recursion limit). When it finds a cycle it calls Amaranth's own check, which
raises ``CombinationalCycle`` with the path; the verdict is therefore never weaker than
Amaranth's and the message is Amaranth's. Test: ``tests/hw/test_combcheck.py``.

:func:`fast_comb_check` is a context manager that puts it in place of
``Netlist.check_comb_cycles`` while a netlist is built.
"""

from __future__ import annotations

import contextlib

from amaranth.hdl import _nir

__all__ = ["check_comb_cycles", "fast_comb_check"]

_BITWISE = frozenset(("&", "|", "^"))


def _uniform(cell):
    """Whether every output bit of ``cell`` has the same combinational edges."""
    if isinstance(cell, _nir.Operator):
        n = len(cell.inputs)
        if n == 1:
            return cell.operator != "~"
        if n == 2:
            return cell.operator not in _BITWISE
        return False                        # the multiplexer "m": per bit
    return isinstance(cell, (_nir.Part, _nir.Matches, _nir.AsyncReadPort, _nir.FlipFlop))


def check_comb_cycles(netlist, *, _original=_nir.Netlist.check_comb_cycles):
    """Raise ``CombinationalCycle`` (Amaranth's message) if ``netlist`` has one."""
    cells = netlist.cells
    connections = netlist.connections
    # uniform[idx]: bit 0 of cell idx stands for all its output bits (never for the top cell)
    uniform = [False] + [_uniform(cell) for cell in cells[1:]]

    def edges(net):
        # the nets ``net`` depends on combinationally (each mapped to its representative)
        if net < 0:
            srcs = (connections[net],)
        elif net < 2:
            return ()
        else:
            srcs = [src for src, _ in cells[net >> 16].comb_edges_to(net & 0xFFFF)]
        return [src if src < 2 or not uniform[src >> 16] else (src >> 16) << 16
                for src in srcs]

    done = set()
    busy = set()

    def search(root):
        # root is its own representative and not in ``done``
        busy.add(root)
        stack = [(root, iter(edges(root)))]
        while stack:
            net, it = stack[-1]
            for src in it:
                if src in done:
                    continue
                if src in busy:
                    return True
                busy.add(src)
                stack.append((src, iter(edges(src))))
                break
            else:
                stack.pop()
                busy.discard(net)
                done.add(net)
        return False

    def roots():
        for cell_idx, cell in enumerate(cells):
            if uniform[cell_idx]:
                # every output bit shares bit 0's edges (a cell without outputs adds a root
                # that no net reaches: it cannot make a cycle)
                yield cell_idx << 16
            else:
                yield from cell.output_nets(cell_idx)
        for value in netlist.signals.values():
            yield from value

    found = False
    for net in roots():
        if net >= 2 and uniform[net >> 16]:
            net = (net >> 16) << 16
        if net not in done and search(net):
            found = True
            break
    if found:
        _original(netlist)                  # raises with the path
        raise AssertionError("fpdeep_hw.combcheck found a combinational cycle that "
                             "Amaranth's check does not see")


@contextlib.contextmanager
def fast_comb_check():
    """Use :func:`check_comb_cycles` for ``Netlist.check_comb_cycles`` inside the block."""
    saved = _nir.Netlist.check_comb_cycles
    _nir.Netlist.check_comb_cycles = check_comb_cycles
    try:
        yield
    finally:
        _nir.Netlist.check_comb_cycles = saved
