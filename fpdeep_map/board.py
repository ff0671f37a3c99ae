"""Board descriptions: device resources, clock, chain links and off-chip memory.

One YAML file per board in the ``boards`` package (``boards/<name>.yaml``); the format and the
figures of the shipped boards are described in ``docs/boards.md``.  Every number carries its
source in ``sources``.  Problems with a board file are :class:`~fpdeep_map.errors.FpdeepError`
with a one-line message naming the file, the field and the value.

Members
-------
Board, load_board, parse_board, board_names, BRAM36_BITS
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from importlib import resources


from .errors import FpdeepError, load_yaml, read_shipped_or_file

__all__ = ["Board", "load_board", "parse_board", "board_names", "board_path", "BRAM36_BITS"]

#: Bits in one 36 Kb block RAM (data bits, parity included).
BRAM36_BITS = 36 * 1024

# field -> (type, minimum, required); minimum is inclusive unless noted in _POSITIVE
_INT_FIELDS = {
    "lut": 1, "ff": 1, "bram36": 1, "dsp": 1, "uram": 0,
    "transceivers": 2, "link_lanes": 1,
}
_FLOAT_FIELDS = ("clock_mhz", "transceiver_gbps", "link_gbps", "offchip_gbytes", "offchip_gbps",
                 "power_w")
_STR_FIELDS = ("name", "device", "part", "notes")
_REQUIRED = ("device", "part", "lut", "ff", "bram36", "dsp", "clock_mhz", "transceivers",
             "transceiver_gbps", "link_gbps", "link_lanes", "offchip_gbytes", "offchip_gbps")
_OPTIONAL_ZERO_OK = ("offchip_gbytes", "offchip_gbps")  # 0 = no off-chip memory
#: Numeric fields whose source a shipped board must state.
NUMERIC_FIELDS = ("lut", "ff", "bram36", "dsp", "uram", "clock_mhz", "transceivers",
                  "transceiver_gbps", "link_gbps", "link_lanes", "offchip_gbytes",
                  "offchip_gbps", "power_w")


@dataclass(frozen=True, kw_only=True)
class Board:
    """One FPGA board (one node of the chain).

    Members
    -------
    name : str
        Board name, e.g. ``'vc709'``.
    device, part : str
        FPGA device and full part, e.g. ``'XC7VX690T'``, ``'xc7vx690t-ffg1761-2'``.
    lut, ff, bram36, dsp, uram : int
        Device resources (BRAM counted in 36 Kb blocks; ``uram`` in 288 Kb UltraRAM blocks).
    clock_mhz : float
        Default design clock (``--clock-mhz`` overrides).
    transceivers : int
        Serial lanes the board brings out to connectors usable for chain links (cages and FMC).
    transceiver_gbps : float
        Line rate per lane that :attr:`link_gbps` assumes.
    link_gbps : float
        Usable payload bandwidth of one chain link (to one neighbour), per direction, after line
        coding and clock-compensation overhead (``--link-gbps`` overrides).
    link_lanes : int
        Lanes per neighbour that :attr:`link_gbps` assumes.
    offchip_gbytes, offchip_gbps : float
        Off-chip memory size (GB) and peak bandwidth (Gb/s, all channels together).
    power_w : float or None
        Board power under load if known (for GOPS/J), else ``None``.
    notes : str
        Free text.
    sources : dict
        field -> where the number comes from.  Not part of equality.
    source : str
        The file path (``boards/<name>.yaml`` for shipped boards).  Not part of equality.
    bram_bits : int
        ``bram36 * 36 Kb``.
    """

    name: str
    device: str
    part: str
    lut: int
    ff: int
    bram36: int
    dsp: int
    uram: int = 0
    clock_mhz: float
    transceivers: int
    transceiver_gbps: float
    link_gbps: float
    link_lanes: int
    offchip_gbytes: float
    offchip_gbps: float
    power_w: float | None = None
    notes: str = ""
    sources: dict = field(default_factory=dict, compare=False)
    source: str = field(default="<dict>", compare=False)

    @property
    def bram_bits(self) -> int:
        return self.bram36 * BRAM36_BITS

    @property
    def peak_macs_per_second(self) -> float:
        """One MAC per DSP per cycle at :attr:`clock_mhz` (the paper's model)."""
        return self.dsp * self.clock_mhz * 1e6

    def with_overrides(self, *, link_gbps=None, clock_mhz=None) -> "Board":
        """A copy with the command-line overrides applied (``None`` keeps the board's value).

        Raises :class:`FpdeepError` (file ``--link-gbps`` / ``--clock-mhz``) for values that are
        not positive numbers.
        """
        changes = {}
        for flag, key, value in (("--link-gbps", "link_gbps", link_gbps),
                                 ("--clock-mhz", "clock_mhz", clock_mhz)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not value > 0 or value == float("inf"):
                raise FpdeepError(flag, key, value, "must be a positive number")
            changes[key] = float(value)
        if not changes:
            return self
        srcs = dict(self.sources)
        for key in changes:
            srcs[key] = "command line"
        return replace(self, sources=srcs, **changes)

    def to_dict(self) -> dict:
        """The YAML form (``Board.from_dict(b.to_dict()) == b``)."""
        d = {}
        for f in fields(self):
            if f.name == "source":
                continue
            value = getattr(self, f.name)
            if f.name in ("power_w",) and value is None:
                continue
            if f.name == "notes" and not value:
                continue
            if f.name == "sources":
                value = dict(value)
            d[f.name] = value
        return d

    @classmethod
    def from_dict(cls, data, source: str = "<dict>", file: str | None = None,
                  default_name: str | None = None) -> "Board":
        return _build(data, source=source, file=file if file is not None else source,
                      default_name=default_name)


def _build(data, *, source, file, default_name):
    if data is None:
        raise FpdeepError(file, "(document)", None, "empty board description")
    if not isinstance(data, dict):
        raise FpdeepError(file, "(document)", data, "a board description must be a mapping")
    known = set(_INT_FIELDS) | set(_FLOAT_FIELDS) | set(_STR_FIELDS) | {"sources"}
    for key in data:
        if key not in known:
            raise FpdeepError(file, str(key), data[key],
                              f"unknown field; a board has {', '.join(sorted(known))}")
    for key in _REQUIRED:
        if key not in data:
            raise FpdeepError(file, key, None, "missing")
    kw = {}
    name = data.get("name", default_name if default_name is not None else "board")
    if not isinstance(name, str) or not name.strip():
        raise FpdeepError(file, "name", name, "must be a non-empty string")
    kw["name"] = name
    for key in ("device", "part", "notes"):
        if key in data:
            v = data[key]
            if not isinstance(v, str) or (key != "notes" and not v.strip()):
                raise FpdeepError(file, key, v, "must be a non-empty string")
            kw[key] = v
    for key, minimum in _INT_FIELDS.items():
        if key not in data:
            continue
        v = data[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise FpdeepError(file, key, v, f"must be an integer (got {type(v).__name__})")
        if v < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise FpdeepError(file, key, v, f"must be {what}")
        kw[key] = v
    for key in _FLOAT_FIELDS:
        if key not in data:
            continue
        v = data[key]
        if key == "power_w" and v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v \
                or v == float("inf"):
            raise FpdeepError(file, key, v, "must be a number")
        if key in _OPTIONAL_ZERO_OK:
            if v < 0:
                raise FpdeepError(file, key, v, "must be >= 0 (0: no off-chip memory)")
        elif not v > 0:
            raise FpdeepError(file, key, v, "must be a positive number")
        kw[key] = float(v)
    if (kw["offchip_gbytes"] == 0) != (kw["offchip_gbps"] == 0):
        bad = "offchip_gbps" if kw["offchip_gbytes"] == 0 else "offchip_gbytes"
        raise FpdeepError(file, bad, kw[bad],
                          "offchip_gbytes and offchip_gbps must both be 0 (no off-chip memory) "
                          "or both positive")
    if 2 * kw["link_lanes"] > kw["transceivers"]:
        raise FpdeepError(file, "link_lanes", kw["link_lanes"],
                          f"a chain node needs link_lanes to each of two neighbours, but the "
                          f"board has only {kw['transceivers']} transceivers")
    raw_capacity = kw["link_lanes"] * kw["transceiver_gbps"]
    if kw["link_gbps"] > raw_capacity:
        raise FpdeepError(file, "link_gbps", kw["link_gbps"],
                          f"more than the {kw['link_lanes']} lanes x "
                          f"{kw['transceiver_gbps']:g} Gb/s = {raw_capacity:g} Gb/s line rate "
                          "of one link")
    sources = data.get("sources", {})
    if sources is None:
        sources = {}
    if not isinstance(sources, dict):
        raise FpdeepError(file, "sources", sources, "must be a mapping field -> source text")
    fieldnames = {f.name for f in fields(Board)} - {"sources", "source"}
    for key, text in sources.items():
        if key not in fieldnames:
            raise FpdeepError(file, f"sources.{key}", text, "source given for an unknown field")
        if not isinstance(text, str) or not text.strip():
            raise FpdeepError(file, f"sources.{key}", text, "must be a non-empty string")
    kw["sources"] = dict(sources)
    return Board(source=source, **kw)


def parse_board(text: str, file: str = "<string>", source: str | None = None,
                default_name: str | None = None) -> Board:
    """Parse the YAML text of a board; *file* names it in error messages."""
    data = load_yaml(text, file)
    return _build(data, source=source if source is not None else file, file=file,
                  default_name=default_name)


def _boards_dir():
    return resources.files("boards")


def board_names() -> list:
    """Names of the shipped boards."""
    return sorted(p.name[:-5] for p in _boards_dir().iterdir() if p.name.endswith(".yaml"))


def board_path(name: str) -> str:
    """How a shipped board is named in error messages: ``boards/<name>.yaml``."""
    return f"boards/{name}.yaml"


def load_board(name_or_path) -> Board:
    """Load a shipped board by name (``vc709``, ``kcu105``, ...) or a ``.yaml`` file by path."""
    text, file, name = read_shipped_or_file(name_or_path, _boards_dir(), board_names(), "board",
                                            board_path)
    return parse_board(text, file=file, source=file, default_name=name)
