#!/usr/bin/env bash
# The loss-objective allocation (compare.allocated.alloc_gptq, the compare's default allocated system:
# GPTQ SDClip int3-int8 per block matrix, int7/int8 tied embedding, least expected loss increase)
# against the leading record's export (pg_top, at its own size and searched on its clip knob) at 8 and
# 4 MB on the default model: the compare's default codec and evaluation (256 sampled windows).
set -euo pipefail
cd "$(dirname "$0")/../.."
bytegolf compare hydra.run.dir=results/alloc_loss 'compare.formats=[]' 'compare.references=[pg_top]' \
  'compare.budgets=[8000000,4000000]' compare.front_points=2
bytegolf report results/alloc_loss
