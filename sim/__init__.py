"""sim: numpy golden models, stream test helpers, waveforms and the training harness."""
