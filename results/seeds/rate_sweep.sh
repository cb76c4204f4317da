#!/usr/bin/env bash
# Storage-native finetuning with today's compare (issue 13, section 1), from a fresh clone: the λ front
# and the QAT-only control beside both baselines, every model exported and scored the same way.
# Four finetunes of results/default/model.safetensors on the bundle's 262,144 train tokens, 60 steps ×
# 4 × 1024 tokens, Adam lr 3e-4, the tied embedding in the loop at int7 k 14 (rate.embed_*):
#   plain      λ 0, no quantizer in the loop (baseline b: more training, then post-hoc export)
#   qat_e7     λ 0, straight-through SDClip int6 in the loop (quantization-aware only)
#   lam0.3_e7  λ 0.3;  lam1_e7  λ 1.0
# then scalar RTN SDClip with clip_k searched to 7 and 6 MB for each and for the untouched model
# (baseline a), with the compare's defaults (pg_record's int8 embedding rule, fair codec, 256 sampled
# windows in bf16), and the table and front of all five.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=results/seeds/rate_today
WORK=${WORK:-outputs/seeds/rate_today}
for spec in "plain rate.lam=0 rate.ste=false" "qat_e7 rate.lam=0.0" "lam0.3_e7 rate.lam=0.3" "lam1_e7 rate.lam=1.0"; do
  set -- $spec; name=$1; shift
  bytegolf train data=default rate.init=results/default/model.safetensors rate.steps=60 "$@" \
    out="$WORK/$name" hydra.run.dir="$WORK/${name}_run"
  mkdir -p "$OUT/$name"
  cp "$WORK/$name/rate_train.json" "$WORK/$name/curve.png" "$WORK/${name}_run/train.log" "$OUT/$name/"
done
for name in default plain qat_e7 lam0.3_e7 lam1_e7; do
  ckpt=$WORK/$name/model.safetensors
  [ "$name" = default ] && ckpt=results/default/model.safetensors
  bytegolf compare model.checkpoint="$ckpt" hydra.run.dir="$OUT/compare_$name" \
    'compare.formats=[scalar]' 'compare.references=[]' compare.allocated=null \
    'compare.budgets=[7000000,6000000]' compare.front_points=2
done
python -m bytegolf.study.crossmodel --out "$OUT" --baseline default --baseline plain \
  default="$OUT/compare_default" plain="$OUT/compare_plain" qat_e7="$OUT/compare_qat_e7" \
  lam0.3_e7="$OUT/compare_lam0.3_e7" lam1_e7="$OUT/compare_lam1_e7"
