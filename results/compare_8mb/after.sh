#!/usr/bin/env bash
# The "after" rows of additive and clustered near 8 MB under compare_8mb's setup (zstd-12, the first 64
# windows in fp32, each format quantizing the embedding itself), from a fresh clone: additive with its
# damped output objective, clustered (ClusComp calibration) again from a clean revision. The searches
# start near the earlier landings (additive x ≈ 3.3 with the int7 embedding of compare_8_4mb;
# clustered K = 2640) and bracket them. Run from the repository root of a fresh clone.
set -euo pipefail
bytegolf compare 'compare.budgets=[8000000]' compare.embedding=null codec=zstd12 compare.probe_codec=null \
  eval.windows=64 eval.sample=false eval.precision=fp32 \
  'compare.formats=[additive,clustered]' 'compare.references=[]' compare.allocated=null \
  compare.seeds=1 compare.front_points=0 \
  +compare.params.additive.num_codebooks=3.4 +compare.knobs.additive.lo=3.1 compare.knobs.additive.hi=3.7 \
  +compare.params.clustered.codebook_size=2640 '+compare.knobs.clustered={lo: 2400, hi: 2900}' \
  hydra.output_subdir=.hydra_after hydra.run.dir=results/compare_8mb
