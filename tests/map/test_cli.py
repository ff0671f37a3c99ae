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


# -- evaluate: the figures of a plan whose lending was edited by hand --------------------------

FAR_BOARD = "tests/sim/data/tiny-test-far.yaml"


def _far_plan(tmp_path, capsys):
    f = tmp_path / "far.yaml"
    code, _, err = cli(capsys, "plan", "--net", "tiny", "--board", FAR_BOARD, "--nodes", "4",
                       "--batch", "4", "--max-row-lanes", "1", "--out", str(f))
    assert code == 0, err
    return f


@pytest.mark.parametrize("net,board,nodes,extra", [
    ("tiny", "tiny-test", 2, ()),                       # lending near
    ("tiny", FAR_BOARD, 4, ()),                         # lending 2 hops, LGB spilled first
    ("tiny", "tests/sim/data/tiny-test-b24d90.yaml", 3, ("--ocp-threshold", "1")),
    ("digits", "tiny-test", 3, ()),                     # two chains of one layer
    ("vgg16", "vc709", 15, ()),
])
def test_evaluate_reproduces_the_mapper(capsys, tmp_path, net, board, nodes, extra):
    """An unedited plan evaluates to itself: same segments, lending, memories, links (the
    streams of a link as a set: lends are listed by lender) and summary."""
    f = tmp_path / "p.yaml"
    code, _, err = cli(capsys, "plan", "--net", net, "--board", board, "--nodes", str(nodes),
                       "--batch", "4", "--max-row-lanes", "1", *extra, "--out", str(f))
    assert code == 0, err
    out = tmp_path / "e.yaml"
    code, _, err = cli(capsys, "evaluate", "--plan", str(f), "--out", str(out))
    assert code == 0 and err == "", err
    a, b = Plan.from_yaml(f.read_text()).to_dict(), Plan.from_yaml(out.read_text()).to_dict()
    for d in (a, b):
        for lk in d["links"]:
            lk["streams"] = sorted(lk["streams"], key=json.dumps)
    assert a == b


def test_evaluate_edited_lending(capsys, tmp_path):
    """The ``far`` plan with conv1's 108 weights kept by nodes 0 (28), 1 (40) and 2 (40), as
    ``tests/sim/test_cluster_split.py``'s ``keepers``: its own link figures and period, and a
    warning for node 0, which keeps 28 weights over its budget (the default simulation board
    has room; this made-up board does not)."""
    import yaml
    f = _far_plan(tmp_path, capsys)
    d = yaml.safe_load(f.read_text())
    (lp,) = d["node_plans"][2]["bpram"]
    assert (lp["layer"], lp["lender"], lp["borrower"], lp["weights"]) == ("conv1", 2, 0, 108)
    lp["weights"] = 40
    d["node_plans"][1]["bpram"].append(dict(lp, lender=1))
    d["node_plans"][0]["segments"][0]["weights_borrowed"] = 80
    f.write_text(yaml.safe_dump(d))
    out = tmp_path / "e.yaml"
    code, _, err = cli(capsys, "evaluate", "--plan", str(f), "--out", str(out))
    assert code == 0
    assert err.strip() == (f"warning: {f}: node 0 needs 17.0 BRAM36 with this lending, above "
                           f"its budget of 13.6")
    res = Plan.from_yaml(out.read_text())
    # conv1 stays weight-stationary as a whole (node 0 streams its own set from a lender of
    # its own, as built): 400 cycles per image, as the unedited plan; measured in the
    # co-simulation of this plan, 12 images, B = 4: 400 over the first mini-batch
    assert res.summary["cycles_per_image"] == 400
    assert [[(lp.lender, lp.weights) for lp in q.bpram] for q in res.node_plans] == \
        [[], [(1, 40)], [(2, 40)], []]
    par = {(lk.src, lk.dst): sum(s.words_per_image for s in lk.streams
                                 if s.path == "parameters") for lk in res.links}
    # whole sets of 27 weights: 2 kept by node 1 and 1 passed on from node 2 (81 words), 1
    # from node 2 (27), each stream padded to whole 64-bit link words
    assert par[(1, 0)] == 84 and par[(2, 1)] == 28


@pytest.mark.parametrize("edit,field,needle", [
    (lambda d: d["node_plans"][2]["bpram"][0].update(borrower=1),
     "node_plans[2].bpram[0].layer", "node 1 holds no conv segment of 'conv1'"),
    (lambda d: d["node_plans"][2]["bpram"][0].update(weights=109),
     "node_plans[2].bpram[0].weights", "has 108 weights, 0 of them borrowed already"),
    (lambda d: d["node_plans"][0]["segments"][0].update(weights_borrowed=100),
     "node_plans[0].segments[0].weights_borrowed", "lend 108 of 'conv1'"),
    (lambda d: d["node_plans"][0]["segments"][1].update(channels=[0, 7]),
     "node_plans[0].segments", "only the parameter lending of a plan can be edited"),
])
def test_evaluate_refuses(capsys, tmp_path, edit, field, needle):
    import yaml
    f = _far_plan(tmp_path, capsys)
    d = yaml.safe_load(f.read_text())
    edit(d)
    f.write_text(yaml.safe_dump(d))
    out = tmp_path / "e.yaml"
    code, _, err = cli(capsys, "evaluate", "--plan", str(f), "--out", str(out))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {f}: ") and field in lines[0], err
    assert needle in lines[0], err
    assert not out.exists()


def test_evaluate_bad_files(capsys, tmp_path):
    code, _, err = cli(capsys, "evaluate", "--plan", str(tmp_path / "none.yaml"))
    assert code == 2 and "cannot read" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("just: text\n")
    code, _, err = cli(capsys, "evaluate", "--plan", str(bad))
    assert code == 2 and "not a plan file" in err and len(err.strip().splitlines()) == 1
