"""Networks: zoo shapes and work, shape inference, validation errors, random networks, round trips,
and the ``check`` report (fpdeep_map/network.py, fpdeep_map/check.py)."""

import json
import math
import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fpdeep_map.check import check_json, check_report
from fpdeep_map.errors import FpdeepError
from fpdeep_map.network import (KNOWN_KINDS, SUPPORTED_KINDS, UNSUPPORTED_KINDS, Layer, Network,
                                load_network, parse_network, zoo_names)


# ---- the zoo: exact ImageNet shapes and work ----------------------------------------------------

def conv_macs(cin, cout, k, ho, wo, groups=1):
    return cout * ho * wo * (cin // groups) * k * k


# Independent of the YAML files: the layer tables of /work/shared/REFERENCE.md written out.
ALEXNET_MACS = (conv_macs(3, 96, 11, 55, 55) + conv_macs(96, 256, 5, 27, 27, 2)
                + conv_macs(256, 384, 3, 13, 13) + conv_macs(384, 384, 3, 13, 13, 2)
                + conv_macs(384, 256, 3, 13, 13, 2) + 9216 * 4096 + 4096 * 4096 + 4096 * 1000)


def vgg_macs(blocks):
    total, cin, size = 0, 3, 224
    for ch, n in blocks:
        for _ in range(n):
            total += conv_macs(cin, ch, 3, size, size)
            cin = ch
        size //= 2
    return total + 25088 * 4096 + 4096 * 4096 + 4096 * 1000


VGG16 = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
VGG19 = [(64, 2), (128, 2), (256, 4), (512, 4), (512, 4)]


@pytest.mark.parametrize("name, exact, published", [
    ("alexnet", ALEXNET_MACS, 724.4e6),
    ("vgg16", vgg_macs(VGG16), 15.47e9),
    ("vgg19", vgg_macs(VGG19), 19.63e9),
])
def test_zoo_forward_macs(name, exact, published):
    net = load_network(name)
    assert net.forward_macs == exact
    assert net.total_fp_macs == exact
    assert abs(net.forward_macs - published) <= 1e-3 * published
    assert net.forward_ops == 2 * exact


@pytest.mark.parametrize("name, params", [
    ("alexnet", 60_965_224), ("vgg16", 138_357_544), ("vgg19", 143_667_240)])
def test_zoo_parameter_counts(name, params):
    # The well-known parameter counts of the Caffe models (weights + biases).
    assert load_network(name).total_params == params


@pytest.mark.parametrize("name", ["alexnet", "vgg16", "vgg19", "tiny", "digits"])
def test_training_work(name):
    net = load_network(name)
    first = net.compute_layers()[0]
    assert net.eb_macs(first) == 0 and first.eb_macs == 0 and not first.needs_error
    for l in net.compute_layers()[1:]:
        assert net.eb_macs(l) == l.eb_macs == l.fp_macs == l.pg_macs == l.macs > 0
    for l in net.layers:
        if not l.is_compute:
            assert l.macs == l.fp_macs == l.eb_macs == l.pg_macs == net.eb_macs(l) == 0
    assert net.total_eb_macs == net.total_fp_macs - first.macs
    assert net.total_macs == 3 * net.total_fp_macs - first.macs
    assert net.total_ops == 2 * net.total_macs
    assert net.total_params == net.total_weights + net.total_biases
    assert net.totals()["train_macs"] == net.total_macs


def test_zoo_names_and_sources():
    assert zoo_names() == ["alexnet", "digits", "tiny", "vgg16", "vgg19"]
    for n in zoo_names():
        net = load_network(n)
        assert net.name == n and net.source == f"zoo:{n}"
        assert net.layers[-1].kind == "loss"
        assert net.supported and net.unsupported() == []


def test_alexnet_shapes():
    net = load_network("alexnet")
    assert net.input_shape == (3, 227, 227)
    expect = {"conv1": (96, 55, 55), "pool1": (96, 27, 27), "conv2": (256, 27, 27),
              "pool2": (256, 13, 13), "conv3": (384, 13, 13), "conv4": (384, 13, 13),
              "conv5": (256, 13, 13), "pool5": (256, 6, 6), "fc6": (4096, 1, 1),
              "fc7": (4096, 1, 1), "fc8": (1000, 1, 1)}
    for name, shape in expect.items():
        assert net.layer(name).out_shape == shape, name
    assert net.layer("fc6").in_shape == (9216, 1, 1)
    assert [net.layer(n).groups for n in ("conv1", "conv2", "conv3", "conv4", "conv5")] == \
        [1, 2, 1, 2, 2]
    assert net.layer("conv2").weights == 256 * 48 * 25
    assert net.classes == 1000
    assert net.layer("loss").loss == "softmax_cross_entropy"


@pytest.mark.parametrize("name, blocks", [("vgg16", VGG16), ("vgg19", VGG19)])
def test_vgg_shapes(name, blocks):
    net = load_network(name)
    convs = [l for l in net.layers if l.kind == "conv"]
    assert [l.out_channels for l in convs] == [ch for ch, n in blocks for _ in range(n)]
    assert all((l.kernel, l.stride, l.padding) == (3, 1, 1) for l in convs)
    pools = [l.out_shape for l in net.layers if l.kind == "maxpool"]
    assert pools == [(64, 112, 112), (128, 56, 56), (256, 28, 28), (512, 14, 14), (512, 7, 7)]
    assert net.layer("fc6").in_channels == 25088
    assert net.layer("conv1_1").out_activations == 3_211_264


@pytest.mark.parametrize("name, channels, classes", [("tiny", (1, 3), 10), ("digits", (1,), 10)])
def test_small_nets(name, channels, classes):
    net = load_network(name)
    c, h, w = net.input_shape
    assert (h, w) == (8, 8) and c in channels
    assert net.classes == classes
    convs = [l for l in net.layers if l.kind == "conv"]
    assert 2 <= len(convs) <= 3 and all(l.out_channels <= 16 for l in convs)
    assert sum(l.kind == "maxpool" for l in net.layers) == 1
    assert net.forward_macs < 100_000  # small enough to simulate cycle-exactly


def test_load_by_path(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump(load_network("digits").to_dict() | {"name": "mine"}))
    net = load_network(str(p))
    assert net.source == str(p) and net.name == "mine"
    assert net.layers == load_network("digits").layers
    # without a name, the file stem names the network
    d = load_network("tiny").to_dict()
    del d["name"]
    q = tmp_path / "stemname.yaml"
    q.write_text(yaml.safe_dump(d))
    assert load_network(q).name == "stemname"


# ---- shape inference ---------------------------------------------------------------------------

def net_text(layers, inp="{channels: 3, height: 8, width: 8}"):
    body = "\n".join(f"  - {l}" for l in layers)
    return f"input: {inp}\nlayers:\n{body}\n"


TAIL = ["{name: fc, kind: fc, out_features: 10}", "{name: loss, kind: loss}"]


def one(layer, inp="{channels: 3, height: 8, width: 8}"):
    net = parse_network(net_text([layer] + TAIL, inp), "t.yaml")
    return net.layers[0]


def test_conv_shapes():
    l = one("{name: c, kind: conv, out_channels: 6, kernel: 3, stride: 2, padding: 1, groups: 3}")
    assert l.in_shape == (3, 8, 8) and l.out_shape == (6, 4, 4)
    assert (l.in_channels, l.out_channels, l.groups) == (3, 6, 3)
    assert l.weights == 6 * 1 * 9 and l.biases == 6 and l.macs == 6 * 16 * 9
    l = one("{name: c, kind: conv, out_channels: 2, kernel: 8}")
    assert l.out_shape == (2, 1, 1)
    l = one("{name: c, kind: conv, out_channels: 2, kernel: 3, in_channels: 3}",
            "{channels: 3, height: 5, width: 9}")
    assert l.out_shape == (2, 3, 7)


@pytest.mark.parametrize("size, k, s, p, ceil, out", [
    (55, 3, 2, 0, True, 27), (27, 3, 2, 0, True, 13), (13, 3, 2, 0, True, 6),
    (6, 3, 2, 0, True, 3), (6, 3, 2, 0, False, 2),      # Caffe ceil vs floor
    (5, 3, 2, 1, True, 3),                               # last window would start in the padding
    (224, 2, 2, 0, True, 112), (7, 2, 2, 0, True, 4), (7, 2, 2, 0, False, 3),
])
def test_pool_shapes(size, k, s, p, ceil, out):
    extra = "" if ceil else ", ceil_mode: false"
    l = one(f"{{name: p, kind: maxpool, kernel: {k}, stride: {s}, padding: {p}{extra}}}",
            f"{{channels: 2, height: {size}, width: {size}}}")
    assert l.out_shape == (2, out, out)
    assert l.params == 0 and l.macs == 0


def test_fc_flattens_and_checks_in_features():
    net = parse_network(net_text(["{name: f1, kind: fc, in_features: 192, out_features: 7}",
                                  "{name: r, kind: relu}", "{name: f2, kind: fc, out_features: 4}",
                                  "{name: l, kind: loss, loss: squared_error}"]), "t.yaml")
    f1 = net.layer("f1")
    assert f1.in_shape == (192, 1, 1) and f1.out_shape == (7, 1, 1)
    assert f1.weights == 192 * 7 and f1.biases == 7 and f1.macs == 192 * 7
    assert f1.kernel == 1 and f1.macs_per_output == 192
    assert net.classes == 4 and net.layer("l").loss == "squared_error"
    assert net.eb_macs("f1") == 0 and net.eb_macs("f2") == 28


def test_layers_are_frozen_values():
    net = load_network("tiny")
    l = net.layers[0]
    assert isinstance(l, Layer) and hash(l) == hash(Layer(**{f: getattr(l, f) for f in (
        "name", "kind", "in_shape", "out_shape", "in_channels", "out_channels", "kernel",
        "stride", "padding", "groups", "loss", "supported", "ceil_mode", "needs_error",
        "options")}))
    with pytest.raises(AttributeError):
        l.kernel = 5


def test_network_built_directly_marks_the_first_compute_layer():
    from dataclasses import replace
    net = load_network("digits")
    again = Network(name="digits", source="here", input_shape=[1, 8, 8],
                    layers=[replace(l, needs_error=True) for l in net.layers], classes=10)
    assert again == net and again.input_shape == (1, 8, 8)
    assert again.layers[0].eb_macs == 0 and again.total_eb_macs == net.total_eb_macs


def test_layer_queries():
    net = load_network("tiny")
    assert [l.name for l in net.compute_layers()] == ["conv1", "conv2", "conv3", "fc4"]
    assert net.index("pool2") == 4 and net.layer("pool2").kind == "maxpool"
    with pytest.raises(KeyError):
        net.layer("nope")
    assert net.first_compute().name == "conv1"


# ---- validation errors ---------------------------------------------------------------------------

GOOD_CONV = "{name: c, kind: conv, out_channels: 4, kernel: 3, padding: 1}"

ERRORS = [
    # (id, text, field, value, words in the problem)
    ("yaml", "input: {channels: 3, height: 8\nlayers: [\n", "line 2", "layers: [",
     "malformed YAML"),
    ("yaml-tab", "input:\n\tchannels: 3\n", "line 2", "channels: 3", "malformed YAML"),
    ("yaml-end", "input: {channels: 3, height: 8, width: 8}\nlayers: [\n  {name: a,\n\n",
     "line 3", "{name: a,", "malformed YAML"),
    ("duplicate-key", "input: {channels: 1, channels: 2, height: 2, width: 2}\nlayers: []\n",
     "line 1", "input: {channels: 1, channels: 2, height: 2, width: 2}", "duplicate key"),
    ("python-tag", "input: !!python/object:os.system {}\n", "line 1",
     "input: !!python/object:os.system {}", "malformed YAML"),
    ("empty", "", "(document)", None, "empty"),
    ("not-mapping", "- 1\n- 2\n", "(document)", [1, 2], "mapping"),
    ("top-unknown", net_text([GOOD_CONV] + TAIL) + "frobs: 3\n", "frobs", 3, "unknown field"),
    ("no-input", "layers:\n  - {name: l, kind: loss}\n", "input", None, "missing"),
    ("no-layers", "input: {channels: 1, height: 2, width: 2}\n", "layers", None, "missing"),
    ("empty-layers", "input: {channels: 1, height: 2, width: 2}\nlayers: []\n", "layers", [],
     "non-empty"),
    ("input-missing-dim", "input: {channels: 1, height: 2}\nlayers: []\n", "input.width", None,
     "missing"),
    ("input-zero", net_text(TAIL, "{channels: 0, height: 8, width: 8}"), "input.channels", 0,
     "positive"),
    ("input-negative", net_text(TAIL, "{channels: 1, height: -8, width: 8}"), "input.height",
     -8, "positive"),
    ("input-float", net_text(TAIL, "{channels: 1, height: 8, width: 8.5}"), "input.width", 8.5,
     "integer"),
    ("input-string", net_text(TAIL, "{channels: '3', height: 8, width: 8}"), "input.channels",
     "3", "integer"),
    ("input-bool", net_text(TAIL, "{channels: true, height: 8, width: 8}"), "input.channels",
     True, "integer"),
    ("layer-not-mapping", net_text(["conv"] + TAIL), "layers[0]", "conv", "mapping"),
    ("no-name", net_text(["{kind: relu}"] + TAIL), "layers[0].name", None, "missing"),
    ("bad-name", net_text(["{name: 'a b', kind: relu}"] + TAIL), "layers[0].name", "a b",
     "letters"),
    ("no-kind", net_text(["{name: r}"] + TAIL), "layers[0].kind", None, "missing"),
    ("unknown-kind", net_text(["{name: x, kind: frobnicate}"] + TAIL), "layers[0].kind",
     "frobnicate", "unknown layer kind"),
    ("unknown-field", net_text(["{name: c, kind: conv, out_channels: 4, kernel: 3, kernal: 3}"]
                               + TAIL), "layers[0].kernal", 3, "unknown field"),
    ("relu-field", net_text(["{name: r, kind: relu, kernel: 3}"] + TAIL), "layers[0].kernel", 3,
     "unknown field"),
    ("conv-no-kernel", net_text(["{name: c, kind: conv, out_channels: 4}"] + TAIL),
     "layers[0].kernel", None, "missing"),
    ("conv-zero-channels", net_text(["{name: c, kind: conv, out_channels: 0, kernel: 3}"] + TAIL),
     "layers[0].out_channels", 0, "positive"),
    ("conv-negative-kernel", net_text(["{name: c, kind: conv, out_channels: 4, kernel: -3}"]
                                      + TAIL), "layers[0].kernel", -3, "positive"),
    ("conv-zero-stride", net_text(["{name: c, kind: conv, out_channels: 4, kernel: 3, stride: 0}"]
                                  + TAIL), "layers[0].stride", 0, "positive"),
    ("conv-negative-padding", net_text(["{name: c, kind: conv, out_channels: 4, kernel: 3, "
                                        "padding: -1}"] + TAIL), "layers[0].padding", -1, ">= 0"),
    ("conv-float-kernel", net_text(["{name: c, kind: conv, out_channels: 4, kernel: 3.0}"]
                                   + TAIL), "layers[0].kernel", 3.0, "integer"),
    ("conv-in-channels", net_text([GOOD_CONV, "{name: c2, kind: conv, in_channels: 3, "
                                   "out_channels: 4, kernel: 3}"] + TAIL),
     "layers[1].in_channels", 3, "does not match"),
    ("conv-kernel-too-big", net_text(["{name: c, kind: conv, out_channels: 4, kernel: 9}"]
                                     + TAIL), "layers[0].kernel", 9, "larger than the padded"),
    ("conv-groups-in", net_text(["{name: c, kind: conv, out_channels: 4, kernel: 3, groups: 2}"]
                                + TAIL), "layers[0].groups", 2, "does not divide the 3 input"),
    ("conv-groups-out", net_text([GOOD_CONV, "{name: c2, kind: conv, out_channels: 6, kernel: 3,"
                                  " groups: 4}"] + TAIL), "layers[1].groups", 4,
     "does not divide the 6 output"),
    ("pool-kernel-too-big", net_text(["{name: p, kind: maxpool, kernel: 9, stride: 2}"] + TAIL),
     "layers[0].kernel", 9, "larger than the padded"),
    ("pool-padding", net_text(["{name: p, kind: maxpool, kernel: 2, padding: 2}"] + TAIL),
     "layers[0].padding", 2, "smaller than the kernel"),
    ("pool-ceil", net_text(["{name: p, kind: maxpool, kernel: 2, ceil_mode: 1}"] + TAIL),
     "layers[0].ceil_mode", 1, "true or false"),
    ("fc-in-features", net_text(["{name: f, kind: fc, in_features: 100, out_features: 10}",
                                 "{name: l, kind: loss}"]), "layers[0].in_features", 100,
     "does not match the 192"),
    ("fc-no-out", net_text(["{name: f, kind: fc}", "{name: l, kind: loss}"]),
     "layers[0].out_features", None, "missing"),
    ("duplicate-name", net_text([GOOD_CONV, "{name: c, kind: relu}"] + TAIL), "layers[1].name",
     "c", "duplicate"),
    ("no-loss", net_text([GOOD_CONV, "{name: fc, kind: fc, out_features: 10}"]), "layers[1]",
     "fc", "no 'loss' layer"),
    ("two-losses", net_text([GOOD_CONV] + TAIL + ["{name: loss2, kind: loss}"]),
     "layers[3].kind", "loss", "second loss"),
    ("loss-not-last", net_text([GOOD_CONV, "{name: fc, kind: fc, out_features: 10}",
                                "{name: loss, kind: loss}", "{name: r, kind: relu}"]),
     "layers[3]", "r", "after the loss"),
    ("loss-after-conv", net_text([GOOD_CONV, "{name: loss, kind: loss}"]), "layers[1].kind",
     "loss", "must follow the last fc"),
    ("loss-unknown", net_text([GOOD_CONV, "{name: fc, kind: fc, out_features: 10}",
                               "{name: loss, kind: loss, loss: hinge}"]), "layers[2].loss",
     "hinge", "unknown loss"),
    ("concat-fewer", net_text(["{name: x, kind: concat, out_channels: 2}"] + TAIL),
     "layers[0].out_channels", 2, "fewer than"),
]


@pytest.mark.parametrize("text, field, value, problem", [e[1:] for e in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_validation_errors(text, field, value, problem):
    with pytest.raises(FpdeepError) as info:
        parse_network(text, "my.yaml")
    e = info.value
    msg = str(e)
    assert "\n" not in msg
    assert msg.startswith(f"my.yaml: {field}: ")
    assert (e.file, e.field, e.value) == ("my.yaml", field, value)
    assert repr(value) in msg
    assert problem in msg


def test_error_from_file_names_the_path(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(net_text(["{name: c, kind: conv, out_channels: 4, kernel: 0}"] + TAIL))
    with pytest.raises(FpdeepError) as info:
        load_network(str(p))
    assert str(info.value) == (f"{p}: layers[0].kernel: 0: must be a positive integer")


def test_unknown_zoo_name_lists_the_zoo():
    with pytest.raises(FpdeepError) as info:
        load_network("resnet50")
    msg = str(info.value)
    assert msg.startswith("resnet50: network: 'resnet50': ")
    for n in zoo_names():
        assert n in msg


def test_missing_file(tmp_path):
    p = str(tmp_path / "nope.yaml")
    with pytest.raises(FpdeepError) as info:
        load_network(p)
    assert str(info.value) == f"{p}: file: {p!r}: no such file"
    with pytest.raises(FpdeepError, match="is a directory"):
        load_network(str(tmp_path))


def test_unsupported_kinds_are_parsed_and_reported():
    text = net_text([GOOD_CONV, "{name: n1, kind: lrn, local_size: 5, alpha: 0.0001}",
                     "{name: bn, kind: batchnorm}",
                     "{name: ap, kind: avgpool, kernel: 2, stride: 2}",
                     "{name: cat, kind: concat, out_channels: 6}", "{name: add, kind: add}",
                     "{name: fc, kind: fc, out_features: 10}", "{name: d, kind: dropout, ratio: 0.5}",
                     "{name: loss, kind: loss}"])
    net = parse_network(text, "u.yaml")
    assert [l.name for l in net.unsupported()] == ["n1", "bn", "ap", "cat", "add", "d"]
    assert not net.supported
    assert net.layer("ap").out_shape == (4, 4, 4)
    assert net.layer("cat").out_shape == (6, 4, 4)
    assert net.layer("fc").in_channels == 96
    assert net.layer("bn").params == 8
    assert dict(net.layer("n1").options) == {"local_size": 5, "alpha": 0.0001}
    assert Network.from_dict(net.to_dict()) == net
    # an unknown kind is a different error from an unsupported one
    assert set(UNSUPPORTED_KINDS) >= {"lrn", "dropout", "batchnorm", "avgpool", "concat", "add"}
    assert set(SUPPORTED_KINDS) == {"conv", "relu", "maxpool", "fc", "loss"}
    assert not set(SUPPORTED_KINDS) & set(UNSUPPORTED_KINDS)
    assert set(KNOWN_KINDS) == set(SUPPORTED_KINDS) | set(UNSUPPORTED_KINDS)


# ---- random valid networks (hypothesis) -----------------------------------------------------------

def brute_pool(size, k, s, p, ceil):
    """Count windows directly (independent of the implementation's formula)."""
    n = 0
    while True:
        start = n * s
        fits = start + k <= size + 2 * p
        if ceil:
            fits = start <= size + 2 * p - k + s - 1 and start < size + p
        if not fits:
            return n
        n += 1


@st.composite
def networks_with_shapes(draw):
    """A random valid network: (its YAML dict, the expected output shape of every layer)."""
    c0, h0, w0 = draw(st.integers(1, 5)), draw(st.integers(1, 14)), draw(st.integers(1, 14))
    c, h, w = c0, h0, w0
    layers, shapes = [], []
    for i in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["conv", "conv", "relu", "maxpool"]))
        name = f"{kind}{i}"
        if kind == "conv":
            g = draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0]))
            cout = g * draw(st.integers(1, 3))
            p = draw(st.integers(0, 2))
            k = draw(st.integers(1, min(h, w) + 2 * p))
            s = draw(st.integers(1, 3))
            d = {"name": name, "kind": "conv", "out_channels": cout, "kernel": k}
            if s != 1 or draw(st.booleans()):
                d["stride"] = s
            if p or draw(st.booleans()):
                d["padding"] = p
            if g != 1 or draw(st.booleans()):
                d["groups"] = g
            if draw(st.booleans()):
                d["in_channels"] = c
            c, h, w = cout, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        elif kind == "maxpool":
            k = draw(st.integers(1, min(h, w, 4)))
            p = draw(st.integers(0, k - 1))
            s = draw(st.integers(1, 3))
            ceil = draw(st.booleans())
            d = {"name": name, "kind": "maxpool", "kernel": k, "stride": s, "padding": p,
                 "ceil_mode": ceil}
            h, w = brute_pool(h, k, s, p, ceil), brute_pool(w, k, s, p, ceil)
        else:
            d = {"name": name, "kind": "relu"}
        layers.append(d)
        shapes.append((c, h, w))
    features = c * h * w
    for j in range(draw(st.integers(1, 3))):
        out = draw(st.integers(1, 20))
        d = {"name": f"fc{j}", "kind": "fc", "out_features": out}
        if draw(st.booleans()):
            d["in_features"] = features
        layers.append(d)
        shapes.append((out, 1, 1))
        features = out
        if draw(st.booleans()):
            layers.append({"name": f"relu_fc{j}", "kind": "relu"})
            shapes.append((out, 1, 1))
    layers.append({"name": "loss", "kind": "loss",
                   "loss": draw(st.sampled_from(["softmax_cross_entropy", "squared_error"]))})
    shapes.append((features, 1, 1))
    data = {"name": "random", "input": {"channels": c0, "height": h0, "width": w0},
            "layers": layers}
    return data, shapes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks_with_shapes())
def test_random_networks_load_and_chain(case):
    data, shapes = case
    net = Network.from_dict(data, source="random")
    assert [l.out_shape for l in net.layers] == shapes
    prev = net.input_shape
    for l in net.layers:
        if l.kind == "fc":
            assert l.in_shape == (math.prod(prev), 1, 1)
        else:
            assert l.in_shape == prev
        assert all(d >= 1 for d in l.out_shape)
        if l.kind == "conv":
            assert l.in_channels == prev[0] and l.in_channels % l.groups == 0
            assert l.out_channels % l.groups == 0
        prev = l.out_shape
    assert net.classes == net.compute_layers()[-1].out_channels
    assert net.total_eb_macs == net.total_fp_macs - net.compute_layers()[0].macs
    # round trips: dict, and YAML text
    assert Network.from_dict(net.to_dict()) == net
    again = parse_network(net.to_yaml(), "again.yaml")
    assert again == net and again.layers == net.layers


@settings(max_examples=60, deadline=None)
@given(networks_with_shapes(), st.data())
def test_random_bad_sizes_are_rejected(case, data):
    """Any size field of a valid network set to 0, a negative or a float gives an FpdeepError
    naming that field and value."""
    net, _ = case
    spots = [(i, k) for i, l in enumerate(net["layers"]) for k in
             ("out_channels", "kernel", "stride", "out_features", "groups") if k in l]
    i, key = data.draw(st.sampled_from(spots))
    bad = data.draw(st.sampled_from([0, -1, -7, 2.5, "3"]))
    net["layers"][i][key] = bad
    with pytest.raises(FpdeepError) as info:
        Network.from_dict(net, source="r.yaml")
    e = info.value
    assert (e.file, e.field, e.value) == ("r.yaml", f"layers[{i}].{key}", bad)
    assert str(e).startswith(f"r.yaml: layers[{i}].{key}: {bad!r}: ")


@pytest.mark.parametrize("name", ["alexnet", "vgg16", "vgg19", "tiny", "digits"])
def test_zoo_round_trip(name):
    net = load_network(name)
    back = Network.from_dict(net.to_dict(), source="x")
    assert back == net and back.layers == net.layers and back.classes == net.classes
    assert parse_network(net.to_yaml(), "x.yaml") == net
    assert yaml.safe_load(net.to_yaml()) == net.to_dict()


# ---- check report ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["alexnet", "vgg16", "tiny", "digits"])
def test_check_report_lists_every_layer(name):
    net = load_network(name)
    text = check_report(net)
    lines = text.splitlines()
    assert lines[1] == "all layers supported"
    for l in net.layers:
        assert any(f"  {l.name}  " in line for line in lines), l.name
    assert f"forward {net.forward_macs:,} MACs" in text
    assert f"FP+EB+PG {net.total_macs:,} MACs" in text
    assert f"{net.total_params:,}" in text


def test_check_report_alexnet_figures():
    text = check_report(load_network("alexnet"))
    conv1 = next(line for line in text.splitlines() if line.split()[1:2] == ["conv1"])
    assert "3x227x227" in conv1 and "96x55x55" in conv1 and "11x11 s4" in conv1
    cols = re.split(r"\s{2,}", conv1.strip())
    # #, layer, kind, in, out, geometry, FP, EB, PG, params, activations
    assert cols[6:] == ["105.4 M", "0", "105.4 M", "34.94 k", "290.4 k"]
    total = next(line for line in text.splitlines() if line.split()[:1] == ["total"])
    assert "724.4 M" in total and "60.97 M" in total


def test_check_unsupported_up_front():
    net = parse_network(net_text([GOOD_CONV, "{name: norm1, kind: lrn}",
                                  "{name: fc, kind: fc, out_features: 10}",
                                  "{name: drop, kind: dropout}", "{name: loss, kind: loss}"]),
                        "u.yaml")
    lines = check_report(net).splitlines()
    assert lines[1].startswith("UNSUPPORTED layers (2): norm1 (lrn), drop (dropout)")
    j = check_json(net)
    assert j["supported"] is False and j["unsupported"] == ["norm1", "drop"]
    assert [l["supported"] for l in j["layers"]] == [True, False, True, False, True]


def test_check_json():
    net = load_network("digits")
    j = check_json(net)
    json.dumps(j)
    assert j["network"] == "digits" and j["classes"] == 10 and j["supported"] is True
    assert j["input_shape"] == [1, 8, 8]
    assert [l["name"] for l in j["layers"]] == [l.name for l in net.layers]
    conv2 = j["layers"][2]
    assert conv2["in_shape"] == [8, 8, 8] and conv2["out_shape"] == [16, 8, 8]
    assert conv2["fp_macs"] == conv2["eb_macs"] == conv2["pg_macs"] == 16 * 64 * 8 * 9
    assert j["layers"][0]["eb_macs"] == 0
    assert j["totals"]["fp_macs"] == net.forward_macs == 80_896
    assert j["totals"]["params"] == 3_818
