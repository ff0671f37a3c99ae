"""Verilog of a block and a Verilator lint of it, for the per-block lint tests.

``verilator_lint(component, name, tmp_path)`` converts the component with
``amaranth.back.verilog.convert(..., emit_src=False)``, runs
``verilator --lint-only -Wall`` with the reviewed waiver file ``fpdeep_hw/verilator_waivers.vlt``
(each waiver explains which construct of Amaranth's output triggers it) and fails the test with
Verilator's full output on any remaining warning or error. The test is skipped only when
``verilator`` is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from amaranth.back import verilog

__all__ = ["WAIVERS", "verilog_of", "verilator_lint"]

#: The reviewed waiver file.
WAIVERS = Path(__file__).resolve().parent.parent / "fpdeep_hw" / "verilator_waivers.vlt"


def verilog_of(component, name: str) -> str:
    """Verilog text of ``component`` with top module ``name`` (no source locations)."""
    return verilog.convert(component, name=name, emit_src=False)


def verilator_lint(component, name: str, tmp_path) -> str:
    """Lint ``component`` with ``verilator --lint-only -Wall`` and the waiver file.

    Returns the Verilog text. Fails (``pytest.fail``) with Verilator's output if it reports
    anything; skips if Verilator is not installed.
    """
    exe = shutil.which("verilator")
    if exe is None:
        pytest.skip("verilator is not installed")
    text = verilog_of(component, name)
    src = Path(tmp_path) / f"{name}.v"
    src.write_text(text)
    cmd = [exe, "--lint-only", "-Wall", "--top-module", name, str(WAIVERS), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    report = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0 or "%Warning" in report or "%Error" in report:
        pytest.fail(f"verilator lint of {name} failed ({' '.join(cmd)}):\n{report}", pytrace=False)
    return text
