#!/usr/bin/env bash
# The loss-objective allocation (compare.allocated.alloc_gptq, the compare's default allocated system:
# GPTQ SDClip int3-int8 per block matrix, int7/int8 tied embedding, least expected loss increase)
# landed at the size of the leading record's export (pg_top@own, 7,146,318 B with its own serializer)
# and ranked against it on the default model: the compare's default codec for the allocation, the
# compare's default evaluation (256 windows sampled across the validation split, document bootstrap).
set -euo pipefail
cd "$(dirname "$0")/../.."
bytegolf compare hydra.run.dir=results/alloc_loss 'compare.formats=[]' 'compare.references=[pg_top]' \
  compare.search_references=false 'compare.budgets=[7150000]' compare.front_points=1
bytegolf report results/alloc_loss
