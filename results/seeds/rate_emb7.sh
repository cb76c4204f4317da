#!/usr/bin/env bash
# The rate-aware finetune again with the tied embedding in the loop at its export setting (GPTQ int7,
# k 14: rate.embed_bits / embed_clip_k, the default since 3fcc56b), lam 0.3, same steps and data as
# results/seeds/rate.sh, exported and compared the same way; then the table of all five models.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=results/seeds/rate
WORK=${WORK:-outputs/seeds/rate}
bytegolf train data=default rate.init=results/default/model.safetensors rate.steps=60 rate.lam=0.3 \
  out="$WORK/lam0.3_e7" hydra.run.dir="$WORK/lam0.3_e7_run"
mkdir -p "$OUT/lam0.3_e7"
cp "$WORK/lam0.3_e7/rate_train.json" "$WORK/lam0.3_e7/curve.png" "$WORK/lam0.3_e7_run/train.log" "$OUT/lam0.3_e7/"
bytegolf compare model.checkpoint="$WORK/lam0.3_e7/model.safetensors" hydra.run.dir="$OUT/compare_lam0.3_e7" \
  'compare.formats=[scalar]' 'compare.references=[]' compare.allocated=null \
  'compare.budgets=[7000000,6000000]' compare.front_points=2
python -m bytegolf.study.crossmodel --out "$OUT" --baseline default --baseline plain \
  default="$OUT/compare_default" plain="$OUT/compare_plain" lam0.3="$OUT/compare_lam0.3" lam1="$OUT/compare_lam1" \
  lam0.3_e7="$OUT/compare_lam0.3_e7"
