"""Node blocks: the per-layer FP, EB (and BP front), PG modules, weight update and version gate.

See ``docs/hw-node.md``.
"""
