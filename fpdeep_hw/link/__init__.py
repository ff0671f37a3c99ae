"""Link blocks: the serial transceiver PHY (vendor black box) and what is built on it."""
