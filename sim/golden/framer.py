"""Golden model of the serial link framer (:mod:`fpdeep_hw.link.framer`): frame format, CRCs, RX.

Block: :class:`fpdeep_hw.link.framer.LinkTx` / :class:`~fpdeep_hw.link.framer.LinkRx`.
Test: ``tests/hw/test_framer.py``. Documentation: ``docs/hw-link.md``.

This model is written independently of the gateware (table-driven byte-wise CRCs here, XOR
matrices derived from a bit-serial definition there), so the two check each other.

Frame format (64-bit words; bit 63 is the first bit on the wire, bytes big-endian)
----------------------------------------------------------------------------------
::

    header   [63:56] SYNC (0xD5)  [55:48] sid  [47:40] length  [39:32] kind (0 = data)
             [31:16] seq  [15:0] CRC-16/CCITT-FALSE of bytes 0..5 (bits 63..16)
    payload  length words (1 <= length <= max_payload), the stream's words, zero-extended
    trailer  [63:32] TRAILER_MARK (0x7E7E7E7E)  [31:0] CRC-32C of header + payload bytes

``seq`` is the stream's word count before this frame, modulo 2**16 (a per-stream sequence number
counted in words, as TCP counts bytes).

Credit frames (kind 1, when the link direction also carries the credits of the opposite one):
sid 0, seq 0, length ``credit_words(n)`` = ceil(n / 4) for the n streams of the opposite
direction; payload word ``j`` holds in bits ``[16 i + 15 : 16 i]`` the *cumulative* count, modulo
2**16, of words freed by the receive buffer of opposite-direction stream ``4 j + i`` (unused
fields 0). Cumulative counts make a lost credit frame harmless: the next one carries the totals. CRC-32C is the Castagnoli CRC (polynomial 0x1EDC6F41,
reflected, init and final XOR 0xFFFFFFFF: the iSCSI/SCTP/ext4 CRC, check value of ``b"123456789"``
0xE3069283) over the frame's bytes, each word sent big-endian. CRC-16/CCITT-FALSE: polynomial
0x1021, not reflected, init 0xFFFF, no final XOR (check value 0x29B1).

Receiver (:func:`receive`, the model of ``LinkRx``)
---------------------------------------------------
- A word is a *good header* if SYNC, kind 0, a known sid, 1 <= length <= max_payload and its
  CRC-16 all check (or, with ``n_credit`` > 0, kind 1, sid 0, seq 0, length
  ``credit_words(n_credit)`` and its CRC-16). A bad header counts one ``crc_errors`` and starts *hunting*: words are
  discarded until a good header; further bad headers while hunting are not counted again.
- After a good header: ``length`` payload words, then the trailer. A trailer with the wrong mark
  or CRC-32C drops the frame and counts one ``crc_errors`` (no hunting: the next word is expected
  to be a header).
- A frame with a good trailer but ``seq`` different from the stream's expected sequence number
  is dropped and counts one ``seq_errors``; the expectation is resynchronised to
  ``seq + length``. Otherwise the payload is delivered and the expectation advances by
  ``length``.
- A good credit frame updates the credit totals (``RxResult.credit_totals``); a credit frame
  with a bad trailer counts one ``crc_errors``. Credit frames have no sequence check.
- A dropped frame's words are never delivered. (The gateware also drops a frame that would
  overflow its receive buffer, counted in ``crc_errors``; a correct transmitter never sends one
  and corruption producing one needs 4+ bit errors in a header, so this model does not track
  buffer levels.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "SYNC", "KIND_DATA", "KIND_CREDIT", "TRAILER_MARK", "credit_words", "credit_frame", "SEQ_BITS", "crc32c", "crc16_ccitt", "words_to_bytes",
    "header_word", "parse_header", "trailer_word", "frame", "encode", "RxResult", "receive",
    "split_frames", "item_to_words", "words_to_items",
]

SYNC = 0xD5
KIND_DATA = 0
KIND_CREDIT = 1
TRAILER_MARK = 0x7E7E7E7E
SEQ_BITS = 16
_MASK64 = (1 << 64) - 1


def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


def _crc16_table():
    table = []
    for n in range(256):
        c = n << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) & 0xFFFF if c & 0x8000 else (c << 1) & 0xFFFF
        table.append(c)
    return table


_T32 = _crc32c_table()
_T16 = _crc16_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``: reflected, init and final XOR 0xFFFFFFFF."""
    c = 0xFFFFFFFF
    for b in data:
        c = (c >> 8) ^ _T32[(c ^ b) & 0xFF]
    return c ^ 0xFFFFFFFF


def crc16_ccitt(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data``: polynomial 0x1021, init 0xFFFF, not reflected."""
    c = 0xFFFF
    for b in data:
        c = ((c << 8) & 0xFFFF) ^ _T16[((c >> 8) ^ b) & 0xFF]
    return c


def words_to_bytes(words) -> bytes:
    """The bytes of 64-bit words in wire order (each word big-endian)."""
    return b"".join(int(w).to_bytes(8, "big") for w in words)


def header_word(sid: int, length: int, seq: int, kind: int = KIND_DATA) -> int:
    """The header word of a frame (see the module docstring)."""
    top = (SYNC << 40) | ((sid & 0xFF) << 32) | ((length & 0xFF) << 24) | ((kind & 0xFF) << 16) \
        | (seq & 0xFFFF)
    return (top << 16) | crc16_ccitt(top.to_bytes(6, "big"))


def credit_words(n: int) -> int:
    """Payload words of a credit frame for ``n`` streams (16 bits each, 4 per word)."""
    return -(-n // 4)


def parse_header(word: int, sids, max_payload: int, n_credit: int = 0):
    """``(sid, length, seq)`` of a good data header, ``(None, length, 0)`` of a good credit
    header (``n_credit`` > 0 streams in the opposite direction), ``None`` for a bad one."""
    top = word >> 16
    if crc16_ccitt(top.to_bytes(6, "big")) != word & 0xFFFF:
        return None
    sync, sid, length, kind = (top >> 40) & 0xFF, (top >> 32) & 0xFF, (top >> 24) & 0xFF, \
        (top >> 16) & 0xFF
    seq = top & 0xFFFF
    if sync != SYNC:
        return None
    if kind == KIND_CREDIT and n_credit and sid == 0 and seq == 0 and \
            length == credit_words(n_credit):
        return None, length, 0
    if kind != KIND_DATA or sid not in sids or not 1 <= length <= max_payload:
        return None
    return sid, length, seq


def trailer_word(crc: int) -> int:
    """The trailer word carrying a frame's CRC-32C."""
    return (TRAILER_MARK << 32) | crc


def frame(sid: int, seq: int, payload) -> list[int]:
    """The words of one data frame: header, payload, trailer."""
    payload = [int(w) & _MASK64 for w in payload]
    head = header_word(sid, len(payload), seq)
    return [head, *payload, trailer_word(crc32c(words_to_bytes([head, *payload])))]


def credit_frame(totals) -> list[int]:
    """The words of a credit frame carrying cumulative ``totals`` (one per opposite stream)."""
    n = len(totals)
    payload = []
    for j in range(credit_words(n)):
        word = 0
        for i in range(4):
            if 4 * j + i < n:
                word |= (totals[4 * j + i] & 0xFFFF) << (16 * i)
        payload.append(word)
    head = header_word(0, len(payload), 0, KIND_CREDIT)
    return [head, *payload, trailer_word(crc32c(words_to_bytes([head, *payload])))]


def credit_totals(payload, n: int) -> tuple:
    """Cumulative totals carried by a credit frame's payload words."""
    return tuple((payload[k // 4] >> (16 * (k % 4))) & 0xFFFF for k in range(n))


def encode(stream_words: dict, schedule) -> list[int]:
    """Wire words for ``schedule``, a list of ``(sid, length)`` frames in wire order.

    ``stream_words[sid]`` is the list of 64-bit words of each stream; each frame takes the next
    ``length`` words of its stream, and ``seq`` counts the stream's words sent before it. An entry
    ``(None, totals)`` is a credit frame carrying ``totals``.
    """
    pos = {sid: 0 for sid in stream_words}
    out = []
    for sid, length in schedule:
        if sid is None:
            out += credit_frame(length)
            continue
        start = pos[sid]
        chunk = stream_words[sid][start:start + length]
        if len(chunk) != length:
            raise ValueError(f"stream {sid} has only {len(stream_words[sid])} words")
        out += frame(sid, start, chunk)
        pos[sid] = start + length
    return out


def split_frames(words, sids, max_payload: int, n_credit: int = 0):
    """Frames of a clean word sequence: ``(sid, length)``, or ``(None, totals)`` for a credit
    frame (raises on a malformed sequence)."""
    schedule = []
    k = 0
    while k < len(words):
        parsed = parse_header(words[k], sids, max_payload, n_credit)
        if parsed is None:
            raise ValueError(f"word {k} ({words[k]:#018x}) is not a good header")
        sid, length, _ = parsed
        if sid is None:
            schedule.append((None, credit_totals(words[k + 1:k + 1 + length], n_credit)))
        else:
            schedule.append((sid, length))
        k += length + 2
    if k != len(words):
        raise ValueError("the last frame is incomplete")
    return schedule


@dataclass
class RxResult:
    """What :func:`receive` delivers: words per stream, counters, and per-frame outcomes.

    ``frames`` lists ``(first word index, sid, length, outcome)`` for every frame whose header
    was good (sid ``None`` for credit frames), outcome ``"ok"``, ``"crc"`` or ``"seq"``;
    ``bad_headers`` lists the word indices of counted bad headers; ``credit_totals`` the totals of
    each good credit frame, in order.
    """

    delivered: dict
    crc_errors: int = 0
    seq_errors: int = 0
    frames: list = field(default_factory=list)
    bad_headers: list = field(default_factory=list)
    credit_totals: list = field(default_factory=list)


def receive(words, sids, max_payload: int, n_credit: int = 0) -> RxResult:
    """Model of ``LinkRx`` over a received word sequence (see the module docstring)."""
    sids = list(sids)
    res = RxResult(delivered={sid: [] for sid in sids})
    expect = {sid: 0 for sid in sids}
    hunting = False
    k = 0
    n = len(words)
    while k < n:
        parsed = parse_header(words[k], sids, max_payload, n_credit)
        if parsed is None:
            if not hunting:
                res.crc_errors += 1
                res.bad_headers.append(k)
            hunting = True
            k += 1
            continue
        hunting = False
        sid, length, seq = parsed
        if k + length + 1 >= n:
            break                            # incomplete frame at the end: nothing decided yet
        body = words[k:k + length + 1]
        trailer = words[k + length + 1]
        if trailer != trailer_word(crc32c(words_to_bytes(body))):
            res.crc_errors += 1
            res.frames.append((k, sid, length, "crc"))
        elif sid is None:
            res.credit_totals.append(credit_totals(body[1:], n_credit))
            res.frames.append((k, None, length, "ok"))
        elif seq != expect[sid]:
            res.seq_errors += 1
            res.frames.append((k, sid, length, "seq"))
            expect[sid] = (seq + length) % (1 << SEQ_BITS)
        else:
            res.delivered[sid] += body[1:]
            res.frames.append((k, sid, length, "ok"))
            expect[sid] = (seq + length) % (1 << SEQ_BITS)
        k += length + 2
    return res


def item_to_words(item, words: int) -> list[int]:
    """64-bit words of one stream item (``words`` per item; a list for multi-word items)."""
    if words == 1:
        return [int(item)]
    return [int(w) for w in item]


def words_to_items(ws, words: int) -> list:
    """Items of a stream from its words (inverse of :func:`item_to_words`)."""
    if words == 1:
        return list(ws)
    if len(ws) % words:
        raise ValueError(f"{len(ws)} words are not a whole number of {words}-word items")
    return [list(ws[k:k + words]) for k in range(0, len(ws), words)]
