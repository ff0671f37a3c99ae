"""Golden model of the link stream gearbox (:mod:`fpdeep_hw.link.packer`): dense packing of items.

Block: :class:`fpdeep_hw.link.packer.Packer` / :class:`~fpdeep_hw.link.packer.Unpacker`.
Test: ``tests/hw/test_packer.py``. Documentation: ``docs/hw-link.md`` ("Packing").

Format
------
A stream of ``item_bits``-bit items is cut into images of ``items_per_image`` items. The items
of one image are laid end to end, LSB first: item ``k`` of the image occupies bits
``[k * item_bits, (k + 1) * item_bits)`` of the image's bit string, and 64-bit word ``j`` of the
image is bits ``[64 j, 64 j + 64)`` of it. The last word of an image is padded with zero bits,
so every image starts on a fresh word and an image takes exactly
:func:`words_per_image` = ``ceil(items_per_image * item_bits / 64)`` words.

:func:`unpack` ignores the padding bits (the ``Unpacker`` drops them whatever their value).

Pure Python integers (items may be wider than 64 bits), bit-exact with the gateware.
"""

from __future__ import annotations

__all__ = ["WORD_BITS", "words_per_image", "pack", "unpack"]

#: Bits of a link word.
WORD_BITS = 64
_WORD_MASK = (1 << WORD_BITS) - 1


def _check(item_bits, items_per_image):
    for name, value in (("item_bits", item_bits), ("items_per_image", items_per_image)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")


def words_per_image(item_bits: int, items_per_image: int) -> int:
    """64-bit words of one image: ``ceil(items_per_image * item_bits / 64)``."""
    _check(item_bits, items_per_image)
    return -(-items_per_image * item_bits // WORD_BITS)


def pack(items, item_bits: int, items_per_image: int) -> list[int]:
    """Words of ``items`` (whole images) packed densely, each image padded to a whole word.

    ``items`` are non-negative integers below ``2 ** item_bits``; their count must be a
    multiple of ``items_per_image``.
    """
    wpi = words_per_image(item_bits, items_per_image)
    items = [int(x) for x in items]
    if len(items) % items_per_image:
        raise ValueError(f"{len(items)} items are not whole images of {items_per_image}")
    for x in items:
        if not 0 <= x < 1 << item_bits:
            raise ValueError(f"item {x!r} does not fit in {item_bits} bits")
    words = []
    for start in range(0, len(items), items_per_image):
        image = 0
        for k, x in enumerate(items[start:start + items_per_image]):
            image |= x << (k * item_bits)
        words.extend((image >> (WORD_BITS * j)) & _WORD_MASK for j in range(wpi))
    return words


def unpack(words, item_bits: int, items_per_image: int) -> list[int]:
    """Items of ``words`` (whole images of :func:`words_per_image` words), padding dropped."""
    wpi = words_per_image(item_bits, items_per_image)
    words = [int(w) for w in words]
    if len(words) % wpi:
        raise ValueError(f"{len(words)} words are not whole images of {wpi}")
    for w in words:
        if not 0 <= w <= _WORD_MASK:
            raise ValueError(f"word {w!r} does not fit in {WORD_BITS} bits")
    item_mask = (1 << item_bits) - 1
    items = []
    for start in range(0, len(words), wpi):
        image = 0
        for j, w in enumerate(words[start:start + wpi]):
            image |= w << (WORD_BITS * j)
        items.extend((image >> (k * item_bits)) & item_mask for k in range(items_per_image))
    return items
