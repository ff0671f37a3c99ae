"""fpdeep_map: map CNN training onto a 1-D chain of FPGAs (pure Python, no Amaranth)."""
