"""fpdeep_hw: Amaranth 0.5 gateware of an FPDeep node; consumes a plan, never re-derives it."""
