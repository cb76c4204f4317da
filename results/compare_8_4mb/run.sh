#!/usr/bin/env bash
# The ranking at 8 and 4 MB with additive's damped output objective (13edcd3): the compare's defaults
# (fair codec, 256 sampled windows, document bootstrap, 2 seeds for randomized encoders, the three
# reference exports at their own size and searched to each budget, GPTQ int7 embedding in every
# format's plan, alloc_gptq by expected loss) without clustered (its probes take minutes each) and
# without extra front points. Run from the repository root of a fresh clone.
set -euo pipefail
bytegolf compare 'compare.budgets=[8000000,4000000]' \
  'compare.formats=[additive,sparse_outlier,basis_delta,scalar]' compare.front_points=0 \
  hydra.run.dir=results/compare_8_4mb
