"""boards: board descriptions (YAML resources) and their Amaranth platforms."""
