"""User-facing errors of the mapper.

Every problem with user input (a network or board file, a zoo or board name, a command-line
value) is raised as :class:`FpdeepError`.  Its string form is exactly one line::

    <file>: <field>: <value!r>: <problem>

so the command line can print it as it is, exit with status 2 and show no traceback.
"""

from __future__ import annotations

import yaml

__all__ = ["FpdeepError", "yaml_error", "load_yaml"]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class FpdeepError(Exception):
    """Bad user input.

    ``str(e)`` is ONE line: ``'<file>: <field>: <value!r>: <problem>'``.

    Parameters
    ----------
    file : str
        Path of the file at fault, or the zoo/board name (e.g. ``"fpdeep_map/zoo/vgg16.yaml"``,
        ``"my.yaml"``, ``"--nodes"`` for a command-line value).
    field : str
        Dotted path of the offending field, e.g. ``"layers[3].kernel"``, or ``"line 7"`` for
        malformed YAML.
    value : object
        The offending value (shown with ``repr``).
    problem : str
        What is wrong, in words.

    Members
    -------
    file, field, value, problem
        The constructor arguments, unchanged.
    """

    def __init__(self, file, field, value, problem):
        self.file = file
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(file, field, value, problem)

    def __str__(self) -> str:
        value = repr(self.value)
        if len(value) > 120:
            value = value[:117] + "..."
        return _one_line(f"{self.file}: {self.field}: {value}: {self.problem}")


def yaml_error(exc, text: str, file) -> FpdeepError:
    """Turn a PyYAML parse error into a one-line :class:`FpdeepError`.

    The field is ``line N`` (1-based) and the value is the text of that line; when the parser
    stopped at the end of the input or on a blank line, the last non-blank line before it is
    named instead.
    """
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    if context:
        problem = f"{problem} ({context})"
    if mark is None:
        return FpdeepError(file, "(document)", None, f"malformed YAML: {problem}")
    lines = text.splitlines()
    n = min(mark.line, len(lines) - 1)
    while n > 0 and not lines[n].strip():
        n -= 1
    line = lines[n].strip() if 0 <= n < len(lines) else ""
    return FpdeepError(file, f"line {max(n, 0) + 1}", line, f"malformed YAML: {problem}")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""


def _construct_mapping(loader, node, deep=False):
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            dup = key in seen
        except TypeError:
            continue  # unhashable key: let the default constructor report it
        if dup:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, file):
    """Parse YAML *text* (safe types only; a key given twice is an error).

    Every parse problem is a one-line :class:`FpdeepError` naming *file* and the line.
    """
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        raise yaml_error(e, text, file) from None


def read_shipped_or_file(arg, shipped_dir, names, kind, shipped_file):
    """Text of a shipped description (``arg`` in ``names``) or of the YAML file ``arg``.

    Returns ``(text, file, default_name)``: ``file`` names it in error messages
    (``shipped_file(name)`` for a shipped one), ``default_name`` is the name or the file's stem.
    ``kind`` ("network", "board") words the errors.
    """
    import os

    arg = os.fspath(arg)
    if arg in names:
        return (shipped_dir / f"{arg}.yaml").read_text(encoding="utf-8"), shipped_file(arg), arg
    if os.path.isfile(arg):
        try:
            with open(arg, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise FpdeepError(arg, "file", arg, f"cannot read: {e.strerror}") from None
        except UnicodeDecodeError:
            raise FpdeepError(arg, "file", arg, "not a UTF-8 text file") from None
        return text, arg, os.path.splitext(os.path.basename(arg))[0]
    if os.path.isdir(arg):
        raise FpdeepError(arg, "file", arg, f"is a directory, not a {kind} file")
    if os.sep in arg or "/" in arg or arg.endswith((".yaml", ".yml")):
        raise FpdeepError(arg, "file", arg, "no such file")
    shipped = "zoo name" if kind == "network" else "board name"
    raise FpdeepError(arg, kind, arg,
                      f"unknown {kind}: neither a {shipped} ({', '.join(names)}) nor a .yaml file")
