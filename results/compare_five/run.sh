#!/usr/bin/env bash
# additive (AQLM, full output objective) and clustered (ClusComp) where the formats separate, at 4, 3 and
# 2 MB, against the strongest systems of results/compare_low there (alloc_gptq, scalar_gptq): `bytegolf
# compare` with its defaults otherwise (fair codec, 256 sampled windows in bf16, document bootstrap with
# Holm, 2 seeds per randomized landing, the probes aimed by the byte prediction). Run from the
# repository root of a fresh clone set up as the README says; OUT defaults to outputs/compare/five.
set -euo pipefail
out=${1:-outputs/compare/five}
bytegolf compare 'compare.formats=[scalar_gptq,clustered,additive]' 'compare.references=[]' \
  'compare.budgets=[4000000,3000000,2000000]' hydra.run.dir="$out"
bytegolf report "$out"
