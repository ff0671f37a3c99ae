"""Dense gearbox between a node stream of ``item_bits``-bit items and 64-bit link words.

A node stream's item is a pixel of ``C`` lanes (e.g. 6 lanes of 16 bits: 96 bits). Carried one
item per ``ceil(bits / 64)`` words it wastes up to half of the link (96 bits in 128); the
mapper's traffic model assumes dense packing (``values * width / 64`` words per image).
:class:`Packer` packs the items densely into 64-bit words, :class:`Unpacker` cuts them out again.

Format (``sim.golden.packer``): the items of an image (``items_per_image`` of them) are laid end
to end LSB first, item ``k`` in bits ``[k * item_bits, (k + 1) * item_bits)`` of the image, word
``j`` = bits ``[64 j, 64 j + 64)``; the last word of the image is padded with zeros so that each
image starts on a fresh word: ``words_per_image = ceil(items_per_image * item_bits / 64)``.

How it works: both blocks keep a bit buffer ``buf`` whose ``fill`` low bits are valid (all
higher bits are zero). The :class:`Packer` ORs an accepted item in at bit ``fill`` and sends the
low 64 bits whenever ``fill >= 64``; after the last item of an image ``fill`` is rounded up to a
multiple of 64 (the zero padding), so the image's last word is complete at once and leaves on
its own, without waiting for the next image (a training loop stops at a mini-batch boundary).
The :class:`Unpacker` ORs an accepted word in at bit ``fill`` and sends the low ``item_bits``
whenever ``fill >= item_bits``, dropping the image's ``(-items_per_image * item_bits) % 64``
padding bits together with its last item. The variable shifter depends only on registers and
the input payload (the output handshake only selects between constant shifts); ``i.ready``
depends on registers only.

Latency (``LATENCY`` = 1, no stalls): the word completed by an item accepted in cycle ``t``
(``Packer``), or the item completed by a word accepted in cycle ``t`` (``Unpacker``), is on the
output in cycle ``t + 1``. Throughput: with the output always ready, the ``Packer`` takes one
item per cycle when ``item_bits <= 64`` and sends one word per cycle when items are wider and
keep coming; the ``Unpacker`` takes one word per cycle when ``item_bits >= 64`` and sends one
item per cycle when items are narrower and words keep coming.

Golden model: :mod:`sim.golden.packer`. Test: ``tests/hw/test_packer.py``.
Documentation: ``docs/hw-link.md`` ("Packing (Packer / Unpacker)").
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["WORD_BITS", "Packer", "Unpacker"]

#: Bits of a link word.
WORD_BITS = 64


def _check(who, item_bits, items_per_image):
    if isinstance(item_bits, bool) or not isinstance(item_bits, int) or item_bits < 1:
        raise ValueError(f"{who} item_bits must be a positive integer, not {item_bits!r}")
    if isinstance(items_per_image, bool) or not isinstance(items_per_image, int) or \
            items_per_image < 1:
        raise ValueError(f"{who} items_per_image must be a positive integer, "
                         f"not {items_per_image!r}")


class _Gearbox(wiring.Component):
    LATENCY = 1

    def __init__(self, item_bits, items_per_image, members):
        self._item_bits = item_bits
        self._items_per_image = items_per_image
        super().__init__(members)

    @property
    def item_bits(self):
        return self._item_bits

    @property
    def items_per_image(self):
        return self._items_per_image

    @property
    def words_per_image(self):
        return -(-self._items_per_image * self._item_bits // WORD_BITS)

    @property
    def pad_bits(self):
        return WORD_BITS * self.words_per_image - self._items_per_image * self._item_bits

    def _last_item(self, m, transfer):
        """A 1-bit value: the item moving in this cycle is the last of its image."""
        n = self._items_per_image
        if n == 1:
            return Const(1, 1)
        count = Signal(range(n))
        with m.If(transfer):
            m.d.sync += count.eq(Mux(count == n - 1, 0, count + 1))
        return count == n - 1


class Packer(_Gearbox):
    """Items of ``item_bits`` bits in, densely packed 64-bit words out, each image padded.

    Parameters
    ----------
    item_bits : int
        Bits per item (at least 1; may exceed 64).
    items_per_image : int
        Items per image (at least 1); the last word of every image is padded with zeros.

    Members
    -------
    i : ``In(stream.Signature(unsigned(item_bits)))``
        Items. ``ready`` depends on the block's state only.
    o : ``Out(stream.Signature(unsigned(64)))``
        Words, ``words_per_image`` per image, LSB first (``sim.golden.packer.pack``).

    Attributes
    ----------
    item_bits, items_per_image : int
        The parameters (read-only).
    words_per_image : int
        ``ceil(items_per_image * item_bits / 64)``.
    pad_bits : int
        Zero bits at the top of each image's last word.
    LATENCY : int
        1: the word completed by an item accepted in cycle ``t`` is on ``o`` in cycle ``t + 1``.
    """

    def __init__(self, item_bits, items_per_image):
        _check(type(self).__name__, item_bits, items_per_image)
        super().__init__(item_bits, items_per_image, {
            "i": In(stream.Signature(unsigned(item_bits))),
            "o": Out(stream.Signature(unsigned(WORD_BITS))),
        })

    @property
    def capacity(self):
        """Bits of the buffer: ``64 * (ceil(item_bits / 64) + 2)``."""
        return WORD_BITS * (-(-self.item_bits // WORD_BITS) + 2)

    def elaborate(self, platform):
        m = Module()
        w, cap = self.item_bits, self.capacity
        buf = Signal(cap)
        fill = Signal(range(cap + 1))
        accept = self.i.valid & self.i.ready
        emit = self.o.valid & self.o.ready
        last = self._last_item(m, accept)

        m.d.comb += [
            self.o.valid.eq(fill >= WORD_BITS),
            self.o.payload.eq(buf[:WORD_BITS]),
            # Room for the item even if no word leaves (and for its image's padding: cap is a
            # multiple of 64).
            self.i.ready.eq(fill <= cap - w),
        ]

        end = Signal(range(cap + 1))           # fill after the item (and its padding)
        unpadded = fill + w
        padded = Cat(Const(0, 6), (unpadded + WORD_BITS - 1)[6:])
        m.d.comb += end.eq(Mux(accept, Mux(last, padded, unpadded), fill))
        merged = Signal(cap)
        m.d.comb += merged.eq(buf | Mux(accept, (self.i.payload << fill)[:cap], 0))

        with m.If(emit):
            m.d.sync += [buf.eq(merged[WORD_BITS:]), fill.eq(end - WORD_BITS)]
        with m.Else():
            m.d.sync += [buf.eq(merged), fill.eq(end)]
        return m


class Unpacker(_Gearbox):
    """Densely packed 64-bit words in (``Packer`` format), items of ``item_bits`` bits out.

    Parameters
    ----------
    item_bits : int
        Bits per item (at least 1; may exceed 64).
    items_per_image : int
        Items per image (at least 1); the padding of every image's last word is dropped,
        whatever its value.

    Members
    -------
    i : ``In(stream.Signature(unsigned(64)))``
        Words, ``words_per_image`` per image. ``ready`` depends on the block's state only.
    o : ``Out(stream.Signature(unsigned(item_bits)))``
        Items (``sim.golden.packer.unpack``).

    Attributes
    ----------
    item_bits, items_per_image : int
        The parameters (read-only).
    words_per_image : int
        ``ceil(items_per_image * item_bits / 64)``.
    pad_bits : int
        Bits dropped after each image's last item.
    LATENCY : int
        1: the item completed by a word accepted in cycle ``t`` is on ``o`` in cycle ``t + 1``.
    """

    def __init__(self, item_bits, items_per_image):
        _check(type(self).__name__, item_bits, items_per_image)
        super().__init__(item_bits, items_per_image, {
            "i": In(stream.Signature(unsigned(WORD_BITS))),
            "o": Out(stream.Signature(unsigned(item_bits))),
        })

    @property
    def capacity(self):
        """Bits of the buffer: ``item_bits + 128``."""
        return self.item_bits + 2 * WORD_BITS

    def elaborate(self, platform):
        m = Module()
        w, cap, pad = self.item_bits, self.capacity, self.pad_bits
        buf = Signal(cap)
        fill = Signal(range(cap + 1))
        accept = self.i.valid & self.i.ready
        emit = self.o.valid & self.o.ready
        last = self._last_item(m, emit)

        m.d.comb += [
            # An image's padding is inside the buffer as soon as its last item is: words are
            # whole and each image starts on a fresh word.
            self.o.valid.eq(fill >= w),
            self.o.payload.eq(buf[:w]),
            self.i.ready.eq(fill <= cap - WORD_BITS),
        ]

        grown = Signal(range(cap + 1))         # fill after the word
        m.d.comb += grown.eq(Mux(accept, fill + WORD_BITS, fill))
        merged = Signal(cap)
        m.d.comb += merged.eq(buf | Mux(accept, (self.i.payload << fill)[:cap], 0))

        with m.If(emit & last):
            m.d.sync += [buf.eq(merged[w + pad:]), fill.eq(grown - (w + pad))]
        with m.Elif(emit):
            m.d.sync += [buf.eq(merged[w:]), fill.eq(grown - w)]
        with m.Else():
            m.d.sync += [buf.eq(merged), fill.eq(grown)]
        return m
