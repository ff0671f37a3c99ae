"""Waveforms on request for every simulation test.

Run any simulation test with ``FPDEEP_WAVES=DIR`` set and it writes ``DIR/<test>.vcd`` and a
GTKWave save file ``DIR/<test>.gtkw`` next to it::

    FPDEEP_WAVES=build/waves python -m pytest -q tests/hw/test_sfu.py
    gtkwave build/waves/test_sfu__test_relu_random.gtkw

Without the variable the simulation simply runs (no file, no cost).

The save file

- groups signals by interface: a stream port becomes one group named after the port with
  ``valid``, ``ready`` and ``payload`` together; nested interfaces become nested groups; plain
  ports stay at the top;
- decodes payloads: Amaranth writes every field of a ``data.StructLayout``/``ArrayLayout``
  payload as its own VCD variable (``\\i__payload.data[0]``); signed fields and signed ports are
  displayed as signed decimals, the rest in hex;
- opens on the whole run: the zoom (``*<zoom> ...`` line, GTKWave's zoom is ``log2`` of pixels
  per time unit) is computed from the simulated end time and the window size written in the file.

Usage in a test (the ``waves`` fixture of ``tests/conftest.py`` gives the test's name)::

    def test_something(waves):
        sim = Simulator(dut)
        ...
        run_simulation(sim, waves, traces=[dut])
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from amaranth.hdl import Shape, ShapeCastable, Value, ValueLike
from amaranth.lib import data, stream, wiring

__all__ = ["ENV_VAR", "waves_dir", "run_simulation", "group_traces", "gtkw_zoom",
           "WINDOW_SIZE", "SIGNALS_WIDTH", "WAVE_PANE_WIDTH"]

ENV_VAR = "FPDEEP_WAVES"

#: GTKWave window size written into the save file (pixels).
WINDOW_SIZE = (1600, 900)
#: Width of the signal-name pane (pixels).
SIGNALS_WIDTH = 320
#: Width of the wave pane the zoom is computed for: window minus names pane minus borders, rounded
#: down so the whole run stays visible with GTKWave's scrollbars and margins.
WAVE_PANE_WIDTH = 1200


def waves_dir():
    """The directory named by ``FPDEEP_WAVES``, or ``None`` when waveforms are not requested."""
    value = os.environ.get(ENV_VAR, "")
    return Path(value) if value else None


def _sanitise(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "sim"


# --- trace grouping ----------------------------------------------------------------------------

def _port_traces(name, port):
    """Trace specification of one member of an interface, grouped when it is an interface."""
    if isinstance(port, data.View):
        return Value.cast(port)  # the signal itself: Amaranth decodes its fields, no "view" group
    if hasattr(port, "signature") and isinstance(port.signature, wiring.Signature):
        return {name: _interface_traces(port)}
    if isinstance(port, ValueLike):
        return port
    raise TypeError(f"{port!r} is not a traceable object")


def _interface_traces(iface):
    sig = iface.signature
    if isinstance(sig, stream.Signature):
        members = ["valid", "ready", "payload"]
        members += [n for n in sig.members if n not in members]
    else:
        members = list(sig.members)
    items = []
    for member in members:
        if sig.members[member].is_port or sig.members[member].is_signature:
            port = getattr(iface, member)
            if sig.members[member].is_signature and not (
                    hasattr(port, "signature") and isinstance(port.signature, wiring.Signature)):
                # an array of interfaces (dimensions): group each element
                items.append({member: [_port_traces(f"{member}[{k}]", p) for k, p in enumerate(port)]})
                continue
            items.append(_port_traces(member, port))
    return items


def group_traces(traces):
    """Turn components, interfaces, views, lists and dicts into a grouped trace specification.

    Components and interfaces are expanded port by port: each port that is itself an interface
    (e.g. a stream) becomes a dict entry (a GTKWave group named after the port); plain ports stay
    ungrouped. Dicts keep their keys as group names. Views are replaced by their signal.
    """
    if isinstance(traces, data.View):
        return Value.cast(traces)
    if hasattr(traces, "signature") and isinstance(traces.signature, wiring.Signature):
        return _interface_traces(traces)
    if isinstance(traces, dict):
        return {str(k): group_traces(v) for k, v in traces.items()}
    if isinstance(traces, (list, tuple)):
        return [group_traces(t) for t in traces]
    return traces


def _signal_formats(traces, out=None):
    """Map VCD variable names (as GTKWave shows them) of traced signals to 'signed' or 'hex'.

    Walks the trace specification *before* :func:`group_traces` replaced views by their signals,
    because only the view knows the layout (signedness of each field).
    """
    if out is None:
        out = {}
    if isinstance(traces, data.View):
        sig = Value.cast(traces)
        if hasattr(sig, "name"):
            _add_layout_formats(sig.name, traces.shape(), out)
    elif hasattr(traces, "signature") and isinstance(traces.signature, wiring.Signature):
        for _, _, member in traces.signature.flatten(traces):
            _signal_formats(member, out)
    elif isinstance(traces, dict):
        for v in traces.values():
            _signal_formats(v, out)
    elif isinstance(traces, (list, tuple)):
        for v in traces:
            _signal_formats(v, out)
    elif isinstance(traces, ValueLike):
        value = Value.cast(traces)
        for sig in value._rhs_signals():
            s = sig.shape()
            out.setdefault(sig.name + _suffix(s.width), "signed" if s.signed else "hex")
    return out


def _add_layout_formats(name, layout, out):
    def visit(fshape, path):
        if isinstance(fshape, (data.StructLayout, data.UnionLayout)):
            for fname, field in fshape:
                visit(field.shape, f"{path}.{fname}")
            return
        if isinstance(fshape, data.ArrayLayout):
            for k in range(fshape.length):
                visit(fshape.elem_shape, f"{path}[{k}]")
            return
        if isinstance(fshape, ShapeCastable):
            s = Shape.cast(fshape.as_shape()) if not isinstance(fshape, data.Layout) else None
        else:
            s = Shape.cast(fshape)
        if s is not None:
            out["\\" + name + path + _suffix(s.width)] = "signed" if s.signed else "hex"

    visit(layout, "")
    out[name + _suffix(Shape.cast(layout).width)] = "hex"


def _suffix(width):
    return f"[{width - 1}:0]" if width > 1 else ""


# --- save-file post-processing -----------------------------------------------------------------

_FLAG_HEX = 0x22      # hex | rjustify (what Amaranth writes)
_FLAG_SIGNED = 0x420  # signed (decimal) | rjustify


#: Measured with GTKWave 3.3 (Debian bookworm) on the save files written here (window 1600 x 900,
#: names pane 320): a save file with zoom ``z`` opens showing ``GTKWAVE_SPAN_UNITS * 2**-z``
#: time units (femtoseconds, Amaranth's VCD timescale) -- read back with GTKWave's own Tcl
#: ``gtkwave::getWindowEndTime`` for z = -16.2, -20 and -23.8 (tests/hw/test_waves.py repeats
#: the measurement when GTKWave and Xvfb are installed).
GTKWAVE_SPAN_UNITS = 6.08


def gtkw_zoom(end_time_fs: int, pane_width: int = WAVE_PANE_WIDTH) -> float:
    """GTKWave zoom that opens on ``[0, end_time_fs]`` plus a 2 % margin.

    ``pane_width`` is kept for compatibility; the measured relation (``GTKWAVE_SPAN_UNITS``)
    already holds for the window size these save files set.
    """
    span = max(int(end_time_fs), 1) * 1.02  # a 2 % margin after the last edge
    return -math.log2(span / GTKWAVE_SPAN_UNITS)


def _last_timestamp(vcd_path: Path) -> int:
    size = vcd_path.stat().st_size
    with open(vcd_path, "rb") as f:
        f.seek(max(0, size - 65536))
        tail = f.read().decode("ascii", errors="replace")
    stamps = re.findall(r"^#(\d+)\s*$", tail, flags=re.M)
    return int(stamps[-1]) if stamps else 0


def _rewrite_gtkw(gtkw_path: Path, end_time: int, formats: dict):
    lines = gtkw_path.read_text().splitlines()
    header, body = [], []
    for line in lines:
        (header if line.startswith(("[dumpfile", "[savefile")) else body).append(line)
    out = list(header)
    out += [
        "[timestart] 0",
        f"[size] {WINDOW_SIZE[0]} {WINDOW_SIZE[1]}",
        "[pos] -1 -1",
        f"*{gtkw_zoom(end_time):.6f} -1 " + " ".join(["-1"] * 26),
        f"[signals_width] {SIGNALS_WIDTH}",
        "[sst_expanded] 0",
        f"[*] simulated end time {end_time} fs; zoom fits it in {WAVE_PANE_WIDTH} pixels",
    ]
    current = None
    for line in body:
        if line.startswith("@"):
            current = int(line[1:], 16)
            out.append(line)
            continue
        if line and not line.startswith(("-", "[", "*")):
            var = line.rsplit(".", 1)[-1] if "\\" not in line else line[line.index("\\"):]
            fmt = formats.get(var)
            want = _FLAG_SIGNED if fmt == "signed" else _FLAG_HEX
            if current in (_FLAG_HEX, _FLAG_SIGNED) and current != want:
                out.append(f"@{want:x}")
                current = want
        out.append(line)
    gtkw_path.write_text("\n".join(out) + "\n")


def run_simulation(sim, name, traces=(), *, deadline=None):
    """Run ``sim`` to completion (or until ``deadline`` seconds), writing waves if requested.

    Parameters
    ----------
    sim : amaranth.sim.Simulator
    name : str
        File stem (the ``waves`` fixture gives the test's name); sanitised for the file system.
    traces : trace specification
        Components, interfaces, signals, lists and dicts; grouped by :func:`group_traces`.
    deadline : float, optional
        Passed to ``sim.run_until``; ``None`` runs until the testbenches finish.
    """
    def run():
        if deadline is None:
            sim.run()
        else:
            sim.run_until(deadline)

    directory = waves_dir()
    if directory is None:
        run()
        return None
    directory.mkdir(parents=True, exist_ok=True)
    stem = _sanitise(str(name))
    vcd_path = directory / f"{stem}.vcd"
    gtkw_path = directory / f"{stem}.gtkw"
    grouped = group_traces(traces)
    try:
        with sim.write_vcd(str(vcd_path), str(gtkw_path), traces=grouped):
            run()
    finally:
        # also when a testbench failed: that is when the waves are wanted most
        if gtkw_path.exists() and vcd_path.exists():
            _rewrite_gtkw(gtkw_path, _last_timestamp(vcd_path), _signal_formats(traces))
    return vcd_path, gtkw_path
