"""One point: run_point (quantize, write, decode, check, evaluate), its result store, Hydra sweeps and
provenance."""
