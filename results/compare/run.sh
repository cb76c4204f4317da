#!/usr/bin/env bash
# The committed ranking at 16, 8 and 4 MB: the compare's defaults (fair codec, 256 sampled windows in
# bf16, document bootstrap, pg_record's int8 embedding rule in every format's plan, the three reference
# exports at their own size and searched to each budget, alloc_gptq by expected loss) for the systems
# that fit a 2-core session: additive (5-6 min per probe) and clustered (minutes per probe) are left
# out, and so are the extra front points. Run from the repository root of a fresh clone. The allocated
# system goes first; the second command resumes the same directory and adds the rest.
set -euo pipefail
out=results/compare
budgets='compare.budgets=[16000000,8000000,4000000]'
bytegolf compare "$budgets" 'compare.formats=[]' 'compare.references=[]' compare.front_points=0 hydra.run.dir=$out
bytegolf compare "$budgets" 'compare.formats=[scalar_gptq,sparse_outlier,basis_delta,scalar_bits,scalar]' \
  compare.front_points=0 hydra.run.dir=$out
# alloc_wide: alloc_gptq's candidates plus GPTQ int6 at wide clips (k 20-60; entropy-coded, these reach
# below int3's bytes without clipping the outliers, as pg_record searched to 4 MB does at k ≈ 55)
wide='{bits: 6, clip_k: 20.0, match: "blocks.*"}, {bits: 6, clip_k: 30.0, match: "blocks.*"}, {bits: 6, clip_k: 45.0, match: "blocks.*"}, {bits: 6, clip_k: 60.0, match: "blocks.*"}'
base='{bits: 3, clip_k: 4.0, match: "blocks.*"}, {bits: 4, clip_k: 6.0, match: "blocks.*"}, {bits: 5, clip_k: 9.0, match: "blocks.*"}, {bits: 6, clip_k: 12.85, match: "blocks.*"}, {bits: 7, clip_k: 14.0, match: "blocks.*"}, {bits: 8, clip_k: 16.0, match: "blocks.*"}'
emb='{bits: 7, clip_k: 14.0, match: tok_emb.weight}, {bits: 8, clip_k: 16.0, match: tok_emb.weight}, {bits: 8, clip: percentile, clip_q: 0.9999984, scale_floor: 0.007874015748031496, gptq: false, round_stored: false, match: tok_emb.weight}'
bytegolf compare "$budgets" 'compare.formats=[scalar_gptq,sparse_outlier,basis_delta,scalar_bits,scalar]' \
  compare.front_points=0 \
  "+compare.allocated.alloc_wide={format: scalar, params: {gptq: true, act_order: true}, objective: auto, candidates: [$base, $wide, $emb]}" \
  hydra.run.dir=$out
