#!/usr/bin/env bash
# The committed ranking at 16, 8 and 4 MB: `bytegolf compare` with its defaults (the README's command:
# fair codec, 256 sampled windows in bf16, document bootstrap with Holm, pg_record's int8 embedding rule
# in every format's plan, the three reference exports at their own size with pg_record and pg_top
# searched to each budget, scalar / scalar_gptq / sparse_outlier / basis_delta, alloc_gptq), then
# additive (AQLM, 2 seeds per landing) at 4 and 8 MB resuming the same directory. Run from the
# repository root of a fresh clone set up as the README says; OUT defaults to outputs/compare/committed.
set -euo pipefail
out=${1:-outputs/compare/committed}
bytegolf compare hydra.run.dir="$out"
bytegolf compare 'compare.formats=[additive]' 'compare.references=[]' compare.allocated=null \
  'compare.budgets=[4000000,8000000]' hydra.run.dir="$out"
bytegolf report "$out"
