"""``python -m sim.train`` run in-process for tests: its exit code, the JSON it printed and the
whole result of :func:`sim.train.run` behind it, so that one simulation checks both the command
line and the detailed records."""

import contextlib
import io
import json
from unittest import mock

from sim import train


def cli_run(argv):
    """``(exit code, printed JSON or None, sim.train.run's result or None)`` of
    ``sim.train.main(argv)``."""
    seen = {}
    real = train.run

    def spy(*a, **k):
        seen["res"] = res = real(*a, **k)
        return res
    out = io.StringIO()
    with mock.patch.object(train, "run", spy), contextlib.redirect_stdout(out):
        code = train.main(argv)
    text = out.getvalue()
    return code, (json.loads(text) if "--json" in argv and text.strip() else None), \
        seen.get("res")
