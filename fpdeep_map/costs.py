"""Resource cost model of the generated hardware, in one place.

The mapper predicts DSP, BRAM, LUT and FF use of every node from these figures. DSP and BRAM
counts follow from the architecture exactly (one DSP slice per multiply-accumulate lane, memories
sized from their depth and width); LUT and FF figures are estimates of the glue around them and
are meant to be calibrated against Yosys ``synth_xilinx`` counts of the generated nodes (see
``bench/``). Every constant says what it stands for.
"""

# --- BRAM geometry (Xilinx 7-series / UltraScale) -------------------------------------------------
BRAM18_BITS = 18 * 1024            # one RAMB18: 1K x 18 or 512 x 36 (parity bits usable)
BRAM36_BITS = 36 * 1024
#: Words of an 18-bit-or-narrower FIFO packed two per 36-bit row: 16-bit data use 32 of every 36 bits.
FIFO_BITS_PER_BRAM36 = 32 * 1024

#: Aspect ratios of a RAMB18 (depth, width), simple dual port: one write and one read port.
RAMB18_SHAPES = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))
#: Aspect ratios of a RAMB36 (two RAMB18 units), simple dual port.
RAMB36_SHAPES = ((32768, 1), (16384, 2), (8192, 4), (4096, 9), (2048, 18), (1024, 36), (512, 72))
#: Memories this shallow or shallower go to distributed RAM (LUTRAM: RAM64M, 64 deep), as
#: Vivado and Yosys ``synth_xilinx`` place them by default.
LUTRAM_MAX_DEPTH = 64


def bram18_tiles(width, depth, true_dual_port=False):
    """RAMB18 units (a RAMB36 counts 2) of one memory of ``depth`` words of ``width`` bits,
    built from one kind of primitive in one aspect ratio, tiled side by side and stacked, the
    fewest units over the ratios of :data:`RAMB18_SHAPES` and :data:`RAMB36_SHAPES` (no mixed
    ratios, no cascades). 0 for a memory of :data:`LUTRAM_MAX_DEPTH` words or fewer, which goes
    to distributed RAM. An estimate of what synthesis infers: it also packs two narrow RAMB18s
    into one RAMB36 site, which the count of units includes as halves.

    ``true_dual_port``: both ports of the primitive read (one also writes), which rules out the
    widest ratios (512 x 36 and 512 x 72 are simple dual port only), so a memory of 512 words
    or fewer takes as many units as two simple dual-port copies."""
    if width <= 0 or depth <= 0 or depth <= LUTRAM_MAX_DEPTH:
        return 0
    s18, s36 = (RAMB18_SHAPES[:-1], RAMB36_SHAPES[:-1]) if true_dual_port else \
        (RAMB18_SHAPES, RAMB36_SHAPES)
    best = min(-(-width // w) * -(-depth // d) for d, w in s18)
    return min(best, min(2 * -(-width // w) * -(-depth // d) for d, w in s36))



def memory_bram18(width, depth, sync_reads=1, async_reads=0, shared_reads=0):
    """RAMB18 units of one memory: none if a read port is asynchronous (distributed RAM only),
    else :func:`bram18_tiles` once per copy: a copy per synchronous read port (a simple
    dual-port memory: the write port and one read port), except that a read port with a write
    port's address shares that port (``shared_reads``: a true dual-port memory serves it and
    one more read port, in the narrower true dual-port ratios, so it saves block RAM only
    beyond 512 words)."""
    if async_reads:
        return 0
    return (bram18_tiles(width, depth, true_dual_port=shared_reads > 0)
            * max(1, sync_reads - shared_reads))

#: Rows of one distributed-RAM primitive (RAM64M / RAM64X1D).
LUTRAM_ROWS = 64
#: LUTs per stored bit of a distributed-RAM piece of up to 32 / 64 rows, as Yosys
#: ``synth_xilinx`` maps it (``tests/hw/test_distributed_ram.py``): one read port: RAM32M
#: (32 rows x 6 bits in 4 LUTs) / RAM64M (64 x 3); a second read port at the write address
#: (``LPRAM(readers=2)``): RAM32M (32 x 4) / RAM64X1D (64 x 1 in 2 LUTs).
LUTRAM_LUTS_PER_BIT = {(1, False): {32: 2 / 3, 64: 4 / 3}, (2, True): {32: 1, 64: 2}}


def lutram_luts(width, depth, read_ports=1, shared=False):
    """LUTs of a memory of ``depth`` words of ``width`` bits built from distributed RAM in
    pieces of :data:`LUTRAM_ROWS` rows (the last one shorter; a piece of at most 32 rows takes
    the 32-row primitives), with ``read_ports`` synchronous read ports, ``shared``: the first
    at the write port's address (:data:`LUTRAM_LUTS_PER_BIT`; other port sets count a copy
    of one-port pieces per read port)."""
    if width <= 0 or depth <= 0:
        return 0
    key = (read_ports, bool(shared))
    per, copies = (LUTRAM_LUTS_PER_BIT[key], 1) if key in LUTRAM_LUTS_PER_BIT else \
        (LUTRAM_LUTS_PER_BIT[(1, False)], max(1, read_ports))
    full, rest = divmod(depth, LUTRAM_ROWS)
    pieces = [LUTRAM_ROWS] * full + ([rest] if rest else [])
    sixths = sum(round(6 * per[32 if d <= 32 else 64]) for d in pieces)
    return copies * -(-width * sixths // 6)

# --- fractions of a device the mapper may fill ----------------------------------------------------
#: DSP slices given to convolution engines (the rest: timing closure, FC helpers, address arithmetic).
DSP_BUDGET = 0.90
#: BRAM given to parameters, gradients, line buffers and on-chip Act-RAM.
BRAM_BUDGET = 0.85
#: LUT and FF ceilings the plan must stay under.
LUT_BUDGET = 0.85
FF_BUDGET = 0.85
#: Share of the off-chip memory bandwidth the plan may use (refresh, bank conflicts, turnaround).
OFFCHIP_EFFICIENCY = 0.70

# --- per-node fixed logic ------------------------------------------------------------------------
#: Link framers (two interconnection pairs), CRC, credit logic, control and host interface.
NODE_BASE_LUT = 24_000
NODE_BASE_FF = 36_000
#: Link receive/transmit buffers: BRAM36 per interconnection pair.
LINK_FIFO_BRAM36 = 4
#: Off-chip memory controller (MIG-class) when a node uses off-chip memory.
MEMCTRL_LUT = 12_000
MEMCTRL_FF = 15_000

# --- per-engine logic ----------------------------------------------------------------------------
#: Per DSP lane: operand pipeline registers and accumulate/adder-cascade glue.
LUT_PER_DSP = 18
FF_PER_DSP = 52
#: Per K x K tile: result requantisation, overflow counter, control.
LUT_PER_TILE = 40
FF_PER_TILE = 60
#: Per segment (one layer slice on a node): address generators, line-buffer control, SFU.
LUT_PER_SEGMENT = 3_000
FF_PER_SEGMENT = 4_000
#: SFU lanes (ReLU with mask, max-pool with argmax): per output channel lane.
LUT_PER_SFU_LANE = 60
FF_PER_SFU_LANE = 80

# --- link framing (fpdeep_hw/link/framer.py) ------------------------------------------------------
#: Payload words per frame at most, and the header + trailer (CRC) words every frame adds. The link
#: bound on the period counts full frames (a saturated link sends them); the wire words per image
#: count the frames as ``LinkTx`` cuts them (short ones when the link keeps up with its producers:
#: ``fpdeep_map/framing.py``).
LINK_FRAME_PAYLOAD_WORDS = 32
LINK_FRAME_OVERHEAD_WORDS = 2
#: Staging banks of ``LinkTx`` (gathered in turn while another one is on the wire), as built
#: (``LinkTx(banks=3)``, the default since three keep a saturated link busy beside a slow
#: stream): the framing model's.
LINK_TX_BANKS = 3

# --- lent parameters (fpdeep_hw/node/lend.py) ------------------------------------------------------
#: The weight-stationary engines of a layer whose parameters are lent sweep the *padded* map once
#: per streamed weight set ((H + 2P) x (W + 2P) cycles), as built today; False models engines
#: that visit only the Ho x Wo output positions (the architecture's limit, not built yet).
WS_SCANS_PADDING = True

# --- link transit (fpdeep_hw/link/framer.py, fpdeep_hw/link/model.py) -----------------------------
#: Cycles of one hop on the wire (an Aurora-class transceiver pair and its cable; the cluster
#: co-simulation's default ``link_latency``).
LINK_HOP_LATENCY_CYCLES = 54
#: Framer cycles on top of the wire: ``LinkTx`` 2 (header after the first word) and ``LinkRx`` 2
#: (payload visible 2 cycles after the trailer), plus the transfer into and out of the link model.
LINK_FRAMER_LATENCY_CYCLES = 6
#: Bits of one link word.
LINK_WORD_BITS = 64
#: Credits travel back in credit frames (header, one payload word of up to four streams'
#: credits, CRC trailer), at most one per interval on a direction whose reverse carries data
#: (``Cluster(credit_interval=8192)``): 3 x 1,088 / 8,192 = 0.4 wire words per image at 0.2 Gb/s.
LINK_CREDIT_FRAME_WORDS = 3
LINK_CREDIT_INTERVAL_CYCLES = 8192
#: Receive buffer per link stream in 64-bit words (``Cluster(depth=1024)``). A credit frame also
#: leaves as soon as a stream has half of it freed (``LinkTx(credit_urgent=True)``): a stream of
#: ``w`` words per image adds ``w / 512`` credit frames per image on the opposite direction.
LINK_RECEIVE_BUFFER_WORDS = 1024
#: A weight-stationary FP engine (``fpdeep_hw.node.lend.WSFPLayer``) accumulates alternate
#: images in two halves: with its output held back it finishes two images before it stops.
WS_ACCUMULATOR_HALVES = 2

# --- timing of the node blocks, as built (docs/hw-node.md) ----------------------------------------
#: Conv FP and EB engines hold the line buffer's window until the replay takes it, so the first
#: window of every image costs ``2 * Wv + LINE_BUFFER_IMAGE_GAP`` scan cycles (``Wv`` the padded
#: map's width) that only ``R * G`` cycles of replay hide: ``max(0, 2*Wv + 3 - R*G)`` cycles per
#: image more than the CE words (measured: tiny conv2 1031 = 1024 + 7, digits conv1 527 = 512 + 15).
LINE_BUFFER_IMAGE_GAP = 3
#: From the transfer of an image's last error word into ``PGLayer`` to its ``pg_done`` (``LATENCY``
#: 3, the per-image accumulator drain of ``N`` sets is counted apart), the LGB's 2 extra drain
#: cycles, the version gate twice (``update_start``, then ``fp_go`` after ``update_done``) and
#: ``WeightUpdate.LATENCY`` 3: the fixed part of a mini-batch's update round trip.
UPDATE_FIXED_CYCLES = 10
#: The external memory as the model sees it: cycles from a request to its service, and words
#: per burst (the simulation's ``DRAMModel`` latency default and ``NodeTop``'s ``mem_burst``).
MEMORY_LATENCY_CYCLES = 20
MEMORY_BURST_WORDS = 16


def offchip_update_cycles(sets, latency=MEMORY_LATENCY_CYCLES, burst=MEMORY_BURST_WORDS,
                          fold=1):
    """Cycles an update of ``sets`` weight sets whose master copy is off chip
    (``OffchipWeightUpdate``, the plan's ``master_store``) takes beyond the on-chip one's, from
    its last gradient set to its first working-weight set: the last burst's padding words
    written back, the burst acknowledged, pass 2's first burst read, ``2 * latency + burst + 3
    + padding`` (measured against the block: ``tests/hw/test_update.py``). Both passes run at
    one set per cycle, as on chip, when the memory gives two words per cycle.

    ``fold`` (``OffchipWeightUpdate(fold=)``, a set kept as ``fold`` memory words, a burst
    of ``burst`` sets being ``burst * fold`` words; the plan counts ``fold = 1``): both passes
    give a set every ``fold`` cycles, and the tail grows by ``(fold - 1) * (burst + 2 +
    max(0, 2 * padding - 1))``: the last burst leaves the write FIFO at a set every ``fold``
    cycles, the padding sets pass through both FIFOs, pass 2's first set is whole ``fold``
    words after its first came (measured against the block, the same test)."""
    padding = -sets % burst
    return (2 * latency + burst + 3 + padding
            + (fold - 1) * (burst + 2 + max(0, 2 * padding - 1)))
#: From the last input pixel of an FC layer to its output word beyond the ``R * H * W * G``
#: replay cycles (CE pipeline, gather) plus the loss unit's hand-over.
FC_OUTPUT_CYCLES = 6
#: An FC's EB emits its first input pixel's errors this many cycles after one pixel's replay
#: (``R * G`` cycles): tiny fc4 40 + 7 = 47, digits fc3 80 + 7 = 87 (docs/hw-node.md).
FC_EB_FIRST_OUTPUT_CYCLES = 7


def loss_latency(kind, classes):
    """Cycles of the loss unit (``fpdeep_hw/compute/loss.py``, ``LossUnit.latency``) from the
    last FC's output to the first error word."""
    if kind == "squared_error":
        return 1
    return 1 + classes + (classes + 1) + classes * (16 + 2)
