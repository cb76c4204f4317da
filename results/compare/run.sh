#!/usr/bin/env bash
# The committed ranking: `bytegolf compare` with its defaults, the README's command (16, 4, 3 and 2 MB; the
# fair codec; 256 sampled windows in bf16; document bootstrap with Holm; pg_record's int8 embedding rule in
# every format's plan; the three Parameter Golf exports and llama.cpp's Q4_K_M, Q3_K_M and Q2_K at their own
# size, pg_record and pg_top also searched to each budget; scalar, scalar_gptq, clustered (ClusComp),
# additive (AQLM), sparse_outlier, basis_delta, hqq and alloc_gptq; 2 seeds per randomized landing). Run
# from the repository root of a fresh clone set up as the README says; OUT defaults to outputs/compare/committed.
set -euo pipefail
out=${1:-outputs/compare/committed}
bytegolf compare hydra.run.dir="$out"
bytegolf report "$out"
