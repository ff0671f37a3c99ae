"""Shared modules: convert the many identical copies of a block once (build-time only).

A node holds hundreds of identical sub-blocks (the ``P`` engines of a CE array, the lanes of
an accumulator); Amaranth's back end elaborates and converts every copy, bit by bit. A block
that builds such copies wraps each in :func:`shared` with a key naming everything its circuit
depends on. In simulation and in every ordinary conversion ``shared`` returns the block itself.
Inside :func:`sharing` (what ``python -m fpdeep_hw.build`` uses) the first copy of a key is
converted once to its own RTLIL module and every copy becomes an
:class:`~amaranth.hdl.Instance` of that module, connected to the copy's own ports: the same
circuit, the same ports, so the generated Verilog behaves exactly as the flat conversion.

A shared block must be a :class:`~amaranth.lib.wiring.Component` whose circuit depends only on
the key (no initial memory contents that differ between copies), that uses at most the ``sync``
domain, and whose parent touches only its ports.

Test: ``tests/hw/test_build.py`` (the build converts with sharing; Verilog lint and the Icarus
comparison cover it) and ``python bench/bench_build.py``.
"""

from __future__ import annotations

import contextlib
import contextvars
import re

from amaranth.hdl import ClockSignal, Elaboratable, Instance, ResetSignal
from amaranth.lib import wiring

__all__ = ["shared", "sharing", "SharedModules"]

_CURRENT = contextvars.ContextVar("fpdeep_shared_modules", default=None)


class SharedModules:
    """The modules converted once during :func:`sharing`.

    Members
    -------
    rtlil : dict
        ``{module name: RTLIL text}`` of every shared module (and its submodules), in the
        order they were first used; none carries the ``top`` attribute.
    uses : dict
        ``{module name: number of instances}``.
    """

    def __init__(self, prefix="fpdeep_shared", convert=None):
        self.prefix = prefix
        self._convert = convert
        self.rtlil = {}
        self.uses = {}
        self._names = {}
        self._ports = {}

    def _name(self, key):
        if key not in self._names:
            base = re.sub(r"[^A-Za-z0-9_]+", "_", "_".join(str(k) for k in key)).strip("_")
            self._names[key] = f"{self.prefix}_{base}"[:120] + f"_{len(self._names)}"
        return self._names[key]

    def module(self, block, key):
        """The module name of ``key`` (converting ``block`` the first time) and its ports."""
        from amaranth.back import rtlil
        name = self._name(key)
        if name not in self.rtlil:
            token = _CURRENT.set(None)         # the shared module itself is converted flat
            try:
                if self._convert is not None:
                    text = self._convert(block, name=name)
                else:
                    text = rtlil.convert(block, name=name, emit_src=False)
            finally:
                _CURRENT.reset(token)
            text = text.replace("attribute \\top 1\n", "", 1)
            head = text[text.index(f"module \\{name}\n"):]
            head = head[:head.index("\nend\n")]
            self._ports[name] = set(re.findall(r"^  wire width \d+ (?:input|output|inout) \d+ +"
                                               r"(?:signed )?\\(\S+)$", head, re.M))
            self.rtlil[name] = text
        else:
            block._MustUse__used = True
        self.uses[name] = self.uses.get(name, 0) + 1
        return name, self._ports[name]


class _Stub(Elaboratable):
    def __init__(self, block, key, modules):
        self._block, self._key, self._modules = block, key, modules

    def elaborate(self, platform):
        block = self._block
        name, ports = self._modules.module(block, self._key)
        kw = {}
        for path, member, value in block.signature.flatten(block):
            port = "__".join(map(str, path))
            if port not in ports:
                continue                       # a port the module does not use
            kw[("i_" if member.flow == wiring.In else "o_") + port] = value
        if "clk" in ports:
            kw["i_clk"] = ClockSignal("sync")
        if "rst" in ports:
            kw["i_rst"] = ResetSignal("sync")
        # the instance itself, not a module around it: the parent holds the instance cell
        # under the copy's name, and no wrapper module is written per copy
        return Instance(name, **kw)


def shared(block, key):
    """``block`` itself, or inside :func:`sharing` an instance of its shared module.

    ``key`` (a tuple of plain values) must name everything the block's circuit depends on: two
    blocks with equal keys must generate the same module.
    """
    modules = _CURRENT.get()
    if modules is None:
        return block
    return _Stub(block, (type(block).__name__, *key), modules)


@contextlib.contextmanager
def sharing(prefix="fpdeep_shared", convert=None):
    """Context in which :func:`shared` blocks become instances; yields the
    :class:`SharedModules` whose ``rtlil`` texts complete the design's RTLIL. ``convert(block,
    name=)``, if given, replaces ``amaranth.back.rtlil.convert`` for the shared modules."""
    modules = SharedModules(prefix, convert)
    token = _CURRENT.set(modules)
    try:
        yield modules
    finally:
        _CURRENT.reset(token)
