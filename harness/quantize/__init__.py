"""Quantizing a checkpoint: the tensor plan, the LQER plan, the encoder, block calibration and
sensitivity."""
