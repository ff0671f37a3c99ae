"""User-facing errors of the mapper.

Every problem with user input (a network or board file, a zoo or board name, a command-line
value) is raised as :class:`FpdeepError`.  Its string form is exactly one line::

    <file>: <field>: <value!r>: <problem>

so the command line can print it as it is, exit with status 2 and show no traceback.
"""

from __future__ import annotations

__all__ = ["FpdeepError"]


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
