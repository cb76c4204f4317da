#!/usr/bin/env bash
# Experiment 4 (issue 13, section 3): repeated small codebooks against tensor-specific ones at equal
# final bytes. clustered (k-means over 4-channel sub-vectors, knob: codebook size) with one codebook
# per tensor, one per family (c_q, c_k, ..., fc, proj: shared by the 9 layers) and one global
# codebook, each searched to 4 and 3 MB on the default model, 2 k-means seeds per landing, the
# compare's default codec (per blob best of ans, brotli-11, zstd-22, zpaq), the compare's embedding rule,
# 256 sampled windows. Block calibration is off for all three (it cannot fit a codebook shared
# across blocks, so it would favour the tensor scope).
set -euo pipefail
cd "$(dirname "$0")/../.."
bytegolf compare hydra.run.dir=results/seeds/codebooks \
  'compare.formats=[clustered,clustered_family,clustered_global]' 'compare.references=[]' compare.allocated=null \
  '+compare.variants.clustered_family={format: clustered, params: {scope: family}}' \
  '+compare.variants.clustered_global={format: clustered, params: {scope: global}}' \
  '~compare.calibrate.clustered' 'compare.budgets=[4000000,3000000]' compare.front_points=0
bytegolf report results/seeds/codebooks
