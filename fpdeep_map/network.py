"""CNN descriptions: the YAML network format, shape inference, validation and the built-in zoo.

A network is an input shape and a linear list of layers (see ``docs/network-format.md``).
Shapes are inferred layer by layer and checked; every problem with the input is a
:class:`~fpdeep_map.errors.FpdeepError` whose one-line message names the file, the field and the
value.

Operation counts (per image):

* forward propagation (FP): ``conv``: ``Cout*Ho*Wo*(Cin/groups)*K*K`` MACs; ``fc``: ``in*out``;
  all other layers count 0 (ReLU, pooling and the loss are not MAC work).
* error back-propagation (EB): the same count as FP for ``conv`` and ``fc`` -- except the first
  compute layer, whose input is the image and needs no error (0).
* parameter gradients (PG): the same count as FP for ``conv`` and ``fc``.

One MAC is two operations (the papers' GOPS).

Members
-------
Layer, Network, load_network, parse_network, zoo_names, SUPPORTED_KINDS, UNSUPPORTED_KINDS,
LOSSES
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from importlib import resources

import yaml

from .errors import FpdeepError, load_yaml, read_shipped_or_file

__all__ = [
    "Layer", "Network", "load_network", "parse_network", "zoo_names", "zoo_path",
    "SUPPORTED_KINDS", "UNSUPPORTED_KINDS", "KNOWN_KINDS", "LOSSES",
]

#: Layer kinds the mapper and the hardware implement.
SUPPORTED_KINDS = ("conv", "relu", "maxpool", "fc", "loss")
#: Layer kinds that are recognised, parsed and shape-checked, but not implemented
#: (a network holding one is reported by ``check`` and refused by ``plan``).
UNSUPPORTED_KINDS = ("lrn", "dropout", "batchnorm", "avgpool", "concat", "add",
                     "sigmoid", "tanh")
KNOWN_KINDS = SUPPORTED_KINDS + UNSUPPORTED_KINDS
#: Loss functions of the ``loss`` layer; the first is the default.
LOSSES = ("softmax_cross_entropy", "squared_error")

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]*$")

# Fields each kind accepts besides 'name' and 'kind' (required ones first in _REQUIRED).
_FIELDS = {
    "conv": ("in_channels", "out_channels", "kernel", "stride", "padding", "groups"),
    "relu": (),
    "maxpool": ("kernel", "stride", "padding", "ceil_mode"),
    "fc": ("in_features", "out_features"),
    "loss": ("loss",),
    # unsupported kinds: shape-relevant fields; other fields are kept verbatim in `options`
    "lrn": (),
    "dropout": (),
    "batchnorm": (),
    "avgpool": ("kernel", "stride", "padding", "ceil_mode"),
    "concat": ("out_channels",),
    "add": (),
    "sigmoid": (),
    "tanh": (),
}
_REQUIRED = {
    "conv": ("out_channels", "kernel"),
    "maxpool": ("kernel",),
    "avgpool": ("kernel",),
    "fc": ("out_features",),
    "concat": ("out_channels",),
}
_TOP_FIELDS = ("name", "description", "input", "layers")


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass(frozen=True)
class Layer:
    """One layer with its inferred shapes.

    Members
    -------
    name : str
        Unique within the network.
    kind : str
        ``'conv' | 'relu' | 'maxpool' | 'fc' | 'loss'``, or a known-but-unsupported kind
        (``'lrn'``, ``'dropout'``, ``'batchnorm'``, ``'avgpool'``, ``'concat'``, ``'add'``,
        ``'sigmoid'``, ``'tanh'``) with ``supported=False``.
    in_shape, out_shape : tuple
        ``(C, H, W)``.  For ``fc`` both are ``(features, 1, 1)`` (the input is flattened
        C*H*W-major).  For ``loss`` ``out_shape == in_shape`` (the output error has the shape of
        the scores).
    in_channels, out_channels : int
        Channels in and out (features for ``fc``; ``C`` for element-wise layers and pooling).
    kernel, stride, padding, groups : int
        Convolution/pooling geometry.  ``fc`` is recorded as ``kernel=1`` so the conv formulas
        (``K*K`` per weight) apply unchanged.
    loss : str
        For ``kind='loss'``: ``'softmax_cross_entropy'`` (default) or ``'squared_error'``.
    supported : bool
        False for known-but-unsupported kinds.
    ceil_mode : bool
        Pooling output size rounding (Caffe: ceil, the default).
    needs_error : bool
        False for the first compute layer of a network (its input is the image: no EB).
    options : tuple
        Extra fields of unsupported layers as sorted ``(key, value)`` pairs, kept for round trips.
    macs, fp_macs, eb_macs, pg_macs, train_macs : int
        MACs per image (``macs == fp_macs``; ``train_macs = fp + eb + pg``).
    weights, biases, params : int
        Parameter counts (``params = weights + biases``).
    in_activations, out_activations : int
        ``C*H*W`` of the input/output.
    is_compute : bool
        ``conv`` or ``fc``.
    """

    name: str
    kind: str
    in_shape: tuple
    out_shape: tuple
    in_channels: int = 0
    out_channels: int = 0
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    groups: int = 1
    loss: str = ""
    supported: bool = True
    ceil_mode: bool = True
    needs_error: bool = True
    options: tuple = ()

    # ---- work ----------------------------------------------------------------------------
    @property
    def is_compute(self) -> bool:
        return self.kind in ("conv", "fc")

    @property
    def macs(self) -> int:
        if self.kind == "conv":
            _, ho, wo = self.out_shape
            return (self.out_channels * ho * wo * (self.in_channels // self.groups)
                    * self.kernel * self.kernel)
        if self.kind == "fc":
            return self.in_channels * self.out_channels
        return 0

    @property
    def fp_macs(self) -> int:
        return self.macs

    @property
    def eb_macs(self) -> int:
        return self.macs if self.needs_error else 0

    @property
    def pg_macs(self) -> int:
        return self.macs

    @property
    def train_macs(self) -> int:
        return self.fp_macs + self.eb_macs + self.pg_macs

    @property
    def macs_per_output(self) -> int:
        """MACs per output value: ``(Cin/groups)*K*K`` (conv), ``in`` (fc), else 0."""
        if self.kind == "conv":
            return (self.in_channels // self.groups) * self.kernel * self.kernel
        if self.kind == "fc":
            return self.in_channels
        return 0

    # ---- storage -------------------------------------------------------------------------
    @property
    def weights(self) -> int:
        if self.kind == "conv":
            return (self.out_channels * (self.in_channels // self.groups)
                    * self.kernel * self.kernel)
        if self.kind == "fc":
            return self.in_channels * self.out_channels
        if self.kind == "batchnorm":
            return self.in_channels
        return 0

    @property
    def biases(self) -> int:
        if self.kind in ("conv", "fc"):
            return self.out_channels
        if self.kind == "batchnorm":
            return self.in_channels
        return 0

    @property
    def params(self) -> int:
        return self.weights + self.biases

    @property
    def in_activations(self) -> int:
        return _prod(self.in_shape)

    @property
    def out_activations(self) -> int:
        return _prod(self.out_shape)

    # ---- YAML form -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The layer's entry in the YAML ``layers`` list (only what the format needs)."""
        d = {"name": self.name, "kind": self.kind}
        k = self.kind
        if k == "conv":
            d["out_channels"] = self.out_channels
            d["kernel"] = self.kernel
            if self.stride != 1:
                d["stride"] = self.stride
            if self.padding != 0:
                d["padding"] = self.padding
            if self.groups != 1:
                d["groups"] = self.groups
        elif k in ("maxpool", "avgpool"):
            d["kernel"] = self.kernel
            d["stride"] = self.stride
            if self.padding != 0:
                d["padding"] = self.padding
            if not self.ceil_mode:
                d["ceil_mode"] = False
        elif k == "fc":
            d["out_features"] = self.out_channels
        elif k == "loss":
            d["loss"] = self.loss
        elif k == "concat":
            d["out_channels"] = self.out_channels
        for key, value in self.options:
            d[key] = value
        return d


@dataclass
class Network:
    """A validated network: input shape and layers with inferred shapes.

    Members
    -------
    name : str
    source : str
        The file path, or ``'zoo:<name>'``.  Not part of equality.
    input_shape : tuple
        ``(C, H, W)``.
    layers : list[Layer]
    classes : int
        Output features of the last ``fc``.
    description : str
        Free text from the YAML ``description`` field (may be empty).
    total_fp_macs, total_eb_macs, total_pg_macs, total_macs : int
        Per image; ``total_macs`` is the training total FP + EB + PG.
    forward_macs : int
        Alias of ``total_fp_macs``.
    total_weights, total_biases, total_params : int
    forward_ops, total_ops : int
        ``2 * forward_macs`` and ``2 * total_macs`` (one MAC = two operations).
    """

    name: str
    source: str = field(compare=False)
    input_shape: tuple
    layers: list
    classes: int
    description: str = ""

    def __post_init__(self):
        # Layer.eb_macs must agree with Network.eb_macs however the network was built:
        # the first compute layer needs no error, every other one does.
        self.input_shape = tuple(self.input_shape)
        first = next((i for i, l in enumerate(self.layers) if l.is_compute), None)
        self.layers = [l if l.needs_error == (i != first) else replace(l, needs_error=(i != first))
                       for i, l in enumerate(self.layers)]

    # ---- queries -------------------------------------------------------------------------
    def compute_layers(self) -> list:
        """The ``conv`` and ``fc`` layers in order."""
        return [l for l in self.layers if l.is_compute]

    def layer(self, name: str) -> Layer:
        """The layer called *name* (``KeyError`` if there is none)."""
        for l in self.layers:
            if l.name == name:
                return l
        raise KeyError(f"network {self.name!r} has no layer {name!r}")

    def index(self, name: str) -> int:
        """Position of the layer called *name* in :attr:`layers`."""
        for i, l in enumerate(self.layers):
            if l.name == name:
                return i
        raise KeyError(f"network {self.name!r} has no layer {name!r}")

    def unsupported(self) -> list:
        """Layers of known-but-unsupported kinds."""
        return [l for l in self.layers if not l.supported]

    @property
    def supported(self) -> bool:
        return not self.unsupported()

    def first_compute(self):
        """The first ``conv``/``fc`` layer (``None`` if there is none)."""
        for l in self.layers:
            if l.is_compute:
                return l
        return None

    def eb_macs(self, layer) -> int:
        """EB MACs of *layer* (a :class:`Layer` or a name): 0 for the first compute layer."""
        if isinstance(layer, str):
            layer = self.layer(layer)
        first = self.first_compute()
        if first is not None and layer.name == first.name:
            return 0
        return layer.macs if layer.is_compute else 0

    def fp_macs(self, layer) -> int:
        if isinstance(layer, str):
            layer = self.layer(layer)
        return layer.fp_macs

    def pg_macs(self, layer) -> int:
        if isinstance(layer, str):
            layer = self.layer(layer)
        return layer.pg_macs

    # ---- totals --------------------------------------------------------------------------
    @property
    def total_fp_macs(self) -> int:
        return sum(l.fp_macs for l in self.layers)

    @property
    def forward_macs(self) -> int:
        return self.total_fp_macs

    @property
    def total_eb_macs(self) -> int:
        return sum(self.eb_macs(l) for l in self.layers)

    @property
    def total_pg_macs(self) -> int:
        return sum(l.pg_macs for l in self.layers)

    @property
    def total_macs(self) -> int:
        return self.total_fp_macs + self.total_eb_macs + self.total_pg_macs

    @property
    def total_weights(self) -> int:
        return sum(l.weights for l in self.layers)

    @property
    def total_biases(self) -> int:
        return sum(l.biases for l in self.layers)

    @property
    def total_params(self) -> int:
        return sum(l.params for l in self.layers)

    @property
    def forward_ops(self) -> int:
        return 2 * self.forward_macs

    @property
    def total_ops(self) -> int:
        return 2 * self.total_macs

    def totals(self) -> dict:
        """All totals as a plain dict (for reports and JSON)."""
        return {
            "fp_macs": self.total_fp_macs,
            "eb_macs": self.total_eb_macs,
            "pg_macs": self.total_pg_macs,
            "train_macs": self.total_macs,
            "forward_ops": self.forward_ops,
            "train_ops": self.total_ops,
            "weights": self.total_weights,
            "biases": self.total_biases,
            "params": self.total_params,
            "activations": sum(l.out_activations for l in self.layers
                               if l.kind != "loss"),
        }

    # ---- YAML form -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The YAML form (``Network.from_dict(net.to_dict()) == net``)."""
        c, h, w = self.input_shape
        d = {"name": self.name}
        if self.description:
            d["description"] = self.description
        d["input"] = {"channels": c, "height": h, "width": w}
        d["layers"] = [l.to_dict() for l in self.layers]
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    @classmethod
    def from_dict(cls, data, source: str = "<dict>", file: str | None = None,
                  default_name: str | None = None) -> "Network":
        """Build and validate a network from its YAML form.

        *file* names the input in error messages (default: *source*).
        """
        return _build(data, source=source, file=file if file is not None else source,
                      default_name=default_name)


# ---------------------------------------------------------------------------------------------
# parsing and validation

def _err(file, fld, value, problem):
    return FpdeepError(file, fld, value, problem)


def _int(file, fld, value, *, minimum, what="integer"):
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(file, fld, value, f"must be an integer (got {type(value).__name__})")
    if value < minimum:
        if minimum == 1:
            raise _err(file, fld, value, f"must be a positive {what}")
        raise _err(file, fld, value, f"must be an integer >= {minimum}")
    return value


def _pool_out(size, kernel, stride, padding, ceil_mode):
    """Pooling output size.

    ``ceil_mode`` (Caffe's rule): ``ceil((size + 2p - k) / s) + 1`` windows, less a last window
    that would start in the right padding or beyond the input (``(out-1)*s >= size + p``).  Caffe
    drops that window only when ``p > 0``; we drop it always (as PyTorch does), which changes
    nothing for the usual ``k >= s`` and avoids windows that see no input.  Otherwise floor.
    """
    span = size + 2 * padding - kernel
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
    else:
        out = span // stride + 1
    return out


def _build(data, *, source, file, default_name):
    if data is None:
        raise _err(file, "(document)", None,
                   "empty network description; expected a mapping with 'input' and 'layers'")
    if not isinstance(data, dict):
        raise _err(file, "(document)", data,
                   "a network description must be a mapping with 'input' and 'layers'")
    for key in data:
        if key not in _TOP_FIELDS:
            raise _err(file, str(key), data[key],
                       f"unknown field; a network has {', '.join(_TOP_FIELDS)}")

    name = data.get("name", default_name if default_name is not None else "network")
    if not isinstance(name, str) or not name.strip():
        raise _err(file, "name", name, "must be a non-empty string")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise _err(file, "description", description, "must be a string")

    if "input" not in data:
        raise _err(file, "input", None,
                   "missing; give input: {channels: C, height: H, width: W}")
    inp = data["input"]
    if not isinstance(inp, dict):
        raise _err(file, "input", inp, "must be a mapping {channels: C, height: H, width: W}")
    for key in inp:
        if key not in ("channels", "height", "width"):
            raise _err(file, f"input.{key}", inp[key],
                       "unknown field; input has channels, height, width")
    dims = []
    for key in ("channels", "height", "width"):
        if key not in inp:
            raise _err(file, f"input.{key}", None, "missing")
        dims.append(_int(file, f"input.{key}", inp[key], minimum=1))
    input_shape = tuple(dims)

    if "layers" not in data:
        raise _err(file, "layers", None, "missing; give a list of layers")
    raw_layers = data["layers"]
    if not isinstance(raw_layers, list) or not raw_layers:
        raise _err(file, "layers", raw_layers, "must be a non-empty list of layers")

    layers = []
    seen = {}
    shape = input_shape
    prev = "the input"
    for i, raw in enumerate(raw_layers):
        at = f"layers[{i}]"
        if not isinstance(raw, dict):
            raise _err(file, at, raw, "a layer must be a mapping with 'name' and 'kind'")
        if "name" not in raw:
            raise _err(file, f"{at}.name", None, "missing")
        lname = raw["name"]
        if not isinstance(lname, str) or not _NAME_RE.match(lname):
            raise _err(file, f"{at}.name", lname,
                       "must be a string of letters, digits and _ . - / "
                       "(not starting with . - /)")
        if lname in seen:
            raise _err(file, f"{at}.name", lname,
                       f"duplicate layer name (first used by layers[{seen[lname]}])")
        seen[lname] = i
        if "kind" not in raw:
            raise _err(file, f"{at}.kind", None, f"missing (layer {lname!r})")
        kind = raw["kind"]
        if not isinstance(kind, str) or kind not in KNOWN_KINDS:
            raise _err(file, f"{at}.kind", kind,
                       f"unknown layer kind (layer {lname!r}); supported: "
                       f"{', '.join(SUPPORTED_KINDS)}; known but unsupported: "
                       f"{', '.join(UNSUPPORTED_KINDS)}")
        supported = kind in SUPPORTED_KINDS
        allowed = _FIELDS[kind]
        options = []
        for key in raw:
            if key in ("name", "kind") or key in allowed:
                continue
            if supported:
                extra = f"; {kind} takes {', '.join(allowed)}" if allowed else \
                    f"; {kind} takes no fields besides name and kind"
                raise _err(file, f"{at}.{key}", raw[key],
                           f"unknown field for {kind} layer {lname!r}{extra}")
            if not isinstance(key, str):
                raise _err(file, f"{at}.{key}", raw[key], "field names must be strings")
            options.append((key, raw[key]))
        for key in _REQUIRED.get(kind, ()):
            if key not in raw:
                raise _err(file, f"{at}.{key}", None, f"missing ({kind} layer {lname!r})")

        def geti(key, default, minimum):
            if key not in raw:
                return default
            return _int(file, f"{at}.{key}", raw[key], minimum=minimum)

        c, h, w = shape
        where = f"{prev} gives {c}x{h}x{w}"
        common = dict(name=lname, kind=kind, in_shape=shape, supported=supported,
                      options=tuple(sorted(options, key=lambda kv: kv[0])))

        if kind == "conv":
            cout = geti("out_channels", None, 1)
            k = geti("kernel", None, 1)
            s = geti("stride", 1, 1)
            p = geti("padding", 0, 0)
            g = geti("groups", 1, 1)
            cin = geti("in_channels", c, 1)
            if cin != c:
                raise _err(file, f"{at}.in_channels", cin,
                           f"does not match the input of conv {lname!r} ({where})")
            if c % g:
                raise _err(file, f"{at}.groups", g,
                           f"does not divide the {c} input channels of conv {lname!r}")
            if cout % g:
                raise _err(file, f"{at}.groups", g,
                           f"does not divide the {cout} output channels of conv {lname!r}")
            if k > h + 2 * p or k > w + 2 * p:
                raise _err(file, f"{at}.kernel", k,
                           f"larger than the padded input {h + 2 * p}x{w + 2 * p} of conv "
                           f"{lname!r} ({where}, padding {p})")
            ho = (h + 2 * p - k) // s + 1
            wo = (w + 2 * p - k) // s + 1
            layer = Layer(**common, out_shape=(cout, ho, wo), in_channels=c,
                          out_channels=cout, kernel=k, stride=s, padding=p, groups=g)
        elif kind in ("maxpool", "avgpool"):
            k = geti("kernel", None, 1)
            s = geti("stride", k, 1)
            p = geti("padding", 0, 0)
            ceil_mode = raw.get("ceil_mode", True)
            if not isinstance(ceil_mode, bool):
                raise _err(file, f"{at}.ceil_mode", ceil_mode, "must be true or false")
            if p >= k:
                raise _err(file, f"{at}.padding", p,
                           f"must be smaller than the kernel {k} of {kind} {lname!r}")
            if k > h + 2 * p or k > w + 2 * p:
                raise _err(file, f"{at}.kernel", k,
                           f"larger than the padded input {h + 2 * p}x{w + 2 * p} of {kind} "
                           f"{lname!r} ({where}, padding {p})")
            ho = _pool_out(h, k, s, p, ceil_mode)
            wo = _pool_out(w, k, s, p, ceil_mode)
            layer = Layer(**common, out_shape=(c, ho, wo), in_channels=c, out_channels=c,
                          kernel=k, stride=s, padding=p, ceil_mode=ceil_mode)
        elif kind == "fc":
            features = c * h * w
            fout = geti("out_features", None, 1)
            fin = geti("in_features", features, 1)
            if fin != features:
                raise _err(file, f"{at}.in_features", fin,
                           f"does not match the {features} features coming into fc {lname!r} "
                           f"({where}, flattened {features})")
            layer = Layer(**{**common, "in_shape": (features, 1, 1)}, out_shape=(fout, 1, 1),
                          in_channels=features, out_channels=fout, kernel=1)
        elif kind == "loss":
            loss = raw.get("loss", LOSSES[0])
            if loss not in LOSSES:
                raise _err(file, f"{at}.loss", loss,
                           f"unknown loss; choose {' or '.join(LOSSES)}")
            layer = Layer(**common, out_shape=shape, in_channels=c, out_channels=c, loss=loss)
        elif kind == "concat":
            cout = geti("out_channels", None, 1)
            if cout < c:
                raise _err(file, f"{at}.out_channels", cout,
                           f"fewer than the {c} channels coming into concat {lname!r}")
            layer = Layer(**common, out_shape=(cout, h, w), in_channels=c, out_channels=cout)
        else:  # relu and shape-preserving unsupported kinds
            layer = Layer(**common, out_shape=shape, in_channels=c, out_channels=c)
        layers.append(layer)
        shape = layer.out_shape
        prev = f"{kind} {lname!r}"

    # ---- loss placement ------------------------------------------------------------------
    loss_at = [i for i, l in enumerate(layers) if l.kind == "loss"]
    if not loss_at:
        raise _err(file, f"layers[{len(layers) - 1}]", layers[-1].name,
                   "no 'loss' layer: the network ends here; it must end with exactly one loss "
                   "layer after its last fc")
    if len(loss_at) > 1:
        i = loss_at[1]
        raise _err(file, f"layers[{i}].kind", "loss",
                   f"second loss layer {layers[i].name!r} (the first is "
                   f"layers[{loss_at[0]}] {layers[loss_at[0]].name!r}); "
                   "a network has exactly one, at the end")
    i = loss_at[0]
    if i != len(layers) - 1:
        raise _err(file, f"layers[{i + 1}]", layers[i + 1].name,
                   f"layer after the loss {layers[i].name!r}; the loss must be the last layer")
    compute = [l for l in layers if l.is_compute]
    if not compute or compute[-1].kind != "fc":
        last = compute[-1] if compute else None
        got = f"the last compute layer is conv {last.name!r}" if last else \
            "the network has no conv or fc layer"
        raise _err(file, f"layers[{i}].kind", "loss",
                   f"the loss must follow the last fc layer (which gives the class scores); "
                   f"{got}")
    if layers[i].in_shape[1:] != (1, 1):
        raise _err(file, f"layers[{i}]", layers[i].name,
                   f"the loss input must be a vector of class scores, got "
                   f"{'x'.join(map(str, layers[i].in_shape))}")

    return Network(name=name, source=source, input_shape=input_shape, layers=layers,
                   classes=compute[-1].out_channels, description=description)


# ---------------------------------------------------------------------------------------------
# loading

def parse_network(text: str, file: str = "<string>", source: str | None = None,
                  default_name: str | None = None) -> Network:
    """Parse the YAML text of a network; *file* names it in error messages."""
    data = load_yaml(text, file)
    return _build(data, source=source if source is not None else file, file=file,
                  default_name=default_name)


def _zoo_dir():
    return resources.files("fpdeep_map") / "zoo"


def zoo_names() -> list:
    """Names of the built-in networks."""
    return sorted(p.name[:-5] for p in _zoo_dir().iterdir() if p.name.endswith(".yaml"))


def zoo_path(name: str) -> str:
    """How a zoo network is named in error messages: ``fpdeep_map/zoo/<name>.yaml``."""
    return f"fpdeep_map/zoo/{name}.yaml"


def load_network(name_or_path) -> Network:
    """Load a zoo network by name (``alexnet``, ``vgg16``, ...) or a ``.yaml`` file by path."""
    text, file, name = read_shipped_or_file(name_or_path, _zoo_dir(), zoo_names(), "network",
                                            zoo_path)
    source = f"zoo:{name}" if file == zoo_path(name) else file
    return parse_network(text, file=file, source=source, default_name=name)
