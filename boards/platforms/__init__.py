"""Amaranth platforms of the shipped boards (imports Amaranth; ``boards`` itself does not).

:func:`platform_for` maps a board name (as in ``boards/<name>.yaml``) to its platform class:

=============  ==========================================================
``vc709``      :class:`boards.platforms.vc709.VC709Platform`
``kcu105``     :class:`boards.platforms.kcu105.KCU105ChainPlatform`
``alveo-u280`` :class:`boards.platforms.alveo_u280.AlveoU280Platform`
=============  ==========================================================

Each platform class has ``chain_lanes`` (the transceiver lanes a chain link may use, as
``(resource, number, (refclk resource, number))`` triples) and ``gt_channel_sites`` (the
transceiver site of each lane, for the Aurora core's configuration in Vivado). Pin provenance and
what is verified: ``docs/platforms.md``. Tests: ``tests/boards/test_platforms.py``.
"""

from __future__ import annotations

import importlib

__all__ = ["PLATFORMS", "platform_for"]

#: Board name -> (module, class name). Modules are imported on demand.
PLATFORMS = {
    "alveo-u280": ("boards.platforms.alveo_u280", "AlveoU280Platform"),
    "kcu105":     ("boards.platforms.kcu105", "KCU105ChainPlatform"),
    "vc709":      ("boards.platforms.vc709", "VC709Platform"),
}


def platform_for(board_name):
    """Return the Amaranth platform class of board ``board_name`` (e.g. ``"vc709"``).

    Raises
    ------
    ValueError
        If no platform exists for that name (``tiny-test`` is a synthetic board: it has none).
    """
    if not isinstance(board_name, str) or board_name not in PLATFORMS:
        raise ValueError(f"{board_name!r}: no Amaranth platform for this board; platforms exist "
                         f"for: {', '.join(sorted(PLATFORMS))}")
    module_name, class_name = PLATFORMS[board_name]
    return getattr(importlib.import_module(module_name), class_name)
