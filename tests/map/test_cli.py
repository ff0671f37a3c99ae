"""The command line: outputs, and bad input as one line, exit code 2, no traceback, no file."""

import json
import subprocess
import sys

import pytest

from fpdeep_map.cli import main, run
from fpdeep_map.plan import Plan


def cli(capsys, *args):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        run(list(args))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_plan_json_keys(capsys):
    code, out, err = cli(capsys, "plan", "--net", "vgg16", "--board", "vc709", "--nodes", "15",
                         "--json")
    assert code == 0, err
    d = json.loads(out)
    for key in ("network", "board", "nodes", "clock_mhz", "link_gbps", "images_per_second",
                "throughput_gops_per_fpga", "epoch_hours", "dsp_utilization", "idle_fraction",
                "max_link_gbps", "bottleneck", "per_node"):
        assert key in d, key
    assert d["nodes"] == 15 and len(d["per_node"]) == 15
    assert d["bottleneck"] in ("compute", "link", "memory")
    for n in d["per_node"]:
        for key in ("node", "layers", "dsp", "bram36", "lut", "ff", "gops", "link_gbps_in",
                    "link_gbps_out"):
            assert key in n
        for l in n["layers"]:
            assert l["split"] in ("whole", "icp", "ocp")
            lo, hi = l["channels"]
            assert 0 <= lo < hi


def test_plan_table_and_out_file(capsys, tmp_path):
    out_file = tmp_path / "plan.yaml"
    code, out, err = cli(capsys, "plan", "--net", "tiny", "--board", "tiny-test", "--nodes", "2",
                         "--out", str(out_file))
    assert code == 0, err
    assert "throughput" in out and "node" in out
    plan = Plan.from_yaml(out_file.read_text())
    assert plan.nodes == 2 and plan.network == "tiny"


def test_sweep_json(capsys):
    code, out, err = cli(capsys, "sweep", "--net", "digits", "--board", "tiny-test",
                         "--nodes", "2:4", "--json")
    assert code == 0, err
    d = json.loads(out)
    assert [p["nodes"] for p in d["points"]] == [2, 3, 4]
    for p in d["points"]:
        for key in ("nodes", "images_per_second", "throughput_gops_per_fpga", "max_link_gbps",
                    "bottleneck"):
            assert key in p
    assert "linear_limit_nodes" in d


def test_check(capsys):
    code, out, err = cli(capsys, "check", "--net", "alexnet")
    assert code == 0, err
    assert "conv1" in out and "fc8" in out


def test_plots(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "plan.png"
    code, _, err = cli(capsys, "plan", "--net", "tiny", "--board", "tiny-test", "--nodes", "2",
                       "--plot", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png2 = tmp_path / "sweep.png"
    code, _, err = cli(capsys, "sweep", "--net", "tiny", "--board", "tiny-test", "--nodes", "1:3",
                       "--plot", str(png2))
    assert code == 0, err
    assert png2.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


BAD_NETS = {
    "malformed.yaml": "name: x\ninput: {channels: 3, height: 8\nlayers: [\n",
    "unknown_kind.yaml": ("input: {channels: 1, height: 8, width: 8}\nlayers:\n"
                          "  - {name: c, kind: convolution, out_channels: 4, kernel: 3}\n"
                          "  - {name: f, kind: fc, out_features: 2}\n  - {name: l, kind: loss}\n"),
    "zero.yaml": ("input: {channels: 1, height: 8, width: 8}\nlayers:\n"
                  "  - {name: c, kind: conv, out_channels: 0, kernel: 3}\n"
                  "  - {name: f, kind: fc, out_features: 2}\n  - {name: l, kind: loss}\n"),
    "negative.yaml": ("input: {channels: 1, height: -8, width: 8}\nlayers:\n"
                      "  - {name: c, kind: conv, out_channels: 4, kernel: 3}\n"
                      "  - {name: f, kind: fc, out_features: 2}\n  - {name: l, kind: loss}\n"),
    "nochain.yaml": ("input: {channels: 1, height: 8, width: 8}\nlayers:\n"
                     "  - {name: c, kind: conv, out_channels: 4, kernel: 3}\n"
                     "  - {name: d, kind: conv, in_channels: 5, out_channels: 4, kernel: 3}\n"
                     "  - {name: f, kind: fc, out_features: 2}\n  - {name: l, kind: loss}\n"),
}


@pytest.mark.parametrize("name", sorted(BAD_NETS))
def test_bad_network_files(capsys, tmp_path, name):
    path = tmp_path / name
    path.write_text(BAD_NETS[name])
    out_file = tmp_path / "plan.yaml"
    code, out, err = cli(capsys, "plan", "--net", str(path), "--board", "vc709", "--nodes", "2",
                         "--out", str(out_file))
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert name in lines[0]                        # names the file
    assert not out_file.exists()
    assert list(tmp_path.iterdir()) == [path]      # nothing half-written


@pytest.mark.parametrize("args,needle", [
    (["--net", "vgg16", "--board", "no-such-board", "--nodes", "2"], "no-such-board"),
    (["--net", "vgg16", "--board", "vc709", "--nodes", "0"], "--nodes"),
    (["--net", "vgg16", "--board", "vc709", "--nodes", "-3"], "--nodes"),
    (["--net", "vgg16", "--board", "vc709", "--nodes", "2"], "does not fit"),
    (["--net", "vgg16", "--board", "vc709", "--nodes", "15", "--link-gbps", "0"], "--link-gbps"),
    (["--net", "vgg16", "--board", "vc709", "--nodes", "15", "--clock-mhz", "x"], "--clock-mhz"),
    (["--net", "vgg16", "--board", "vc709"], "--nodes"),
])
def test_bad_arguments(capsys, tmp_path, args, needle):
    out_file = tmp_path / "plan.yaml"
    code, out, err = cli(capsys, "plan", *args, "--out", str(out_file))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0]
    assert not out_file.exists()


def test_bad_sweep_range(capsys):
    code, _, err = cli(capsys, "sweep", "--net", "tiny", "--board", "tiny-test", "--nodes", "5:2")
    assert code == 2 and "--nodes" in err


def test_no_traceback_from_a_real_process(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_NETS["unknown_kind.yaml"])
    r = subprocess.run([sys.executable, "-m", "fpdeep_map", "plan", "--net", str(bad),
                        "--board", "vc709", "--nodes", "2", "--out", str(tmp_path / "p.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.yaml").exists()


def test_main_returns_zero(capsys):
    assert main(["check", "--net", "tiny"]) == 0
    assert "conv1" in capsys.readouterr().out
