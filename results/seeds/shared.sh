#!/usr/bin/env bash
# Experiment 5 (issue 13, section 2): a shared-depth model against the default, from a fresh clone.
#  1. Train 9 layers over 3 shared blocks (per-loop control vectors as adapters) with the default's
#     recipe and data: 700 steps × 8 × 1024 tokens of the stdlib corpus, Muon + Adam, bf16 autocast.
#  2. The same compare on both models at 4, 3 and 2 MB: five formats searched to each budget plus the
#     allocated system (the compare's defaults otherwise: fair codec, 256 sampled windows in bf16,
#     pg_record's int8 embedding rule, document bootstrap), then the pairing and Kendall tau.
#  3. Does the codec find the repetition? The shared model written out unshared (checkpoint.unshare:
#     nine blocks, each a copy of its shared block, same logits) through scalar RTN and GPTQ int6, with
#     per-tensor blobs (the default layout) and with one byte-packed stream (layout=all).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=results/seeds/shared3
WORK=${WORK:-outputs/seeds/shared3}   # training state, compare artifacts (not committed)
bytegolf train model.unique_blocks=3 train.steps=700 out="$WORK/model" hydra.run.dir="$WORK/train_run"
mkdir -p "$OUT/model"
cp "$WORK/model/model.safetensors" "$WORK/model/model.json" "$WORK/train_run/train.log" "$OUT/model/"
cp "$WORK"/model/*.png "$OUT/model/" 2>/dev/null || true
SYS=('compare.budgets=[4000000,3000000,2000000]'
  'compare.formats=[scalar,scalar_gptq,scalar_bits,sparse_outlier,basis_delta]'
  'compare.references=[]' compare.front_points=0)
bytegolf compare model.checkpoint="$OUT/model/model.safetensors" "${SYS[@]}" hydra.run.dir="$WORK/compare_shared3"
bytegolf compare model.checkpoint=results/default/model.safetensors "${SYS[@]}" hydra.run.dir="$WORK/compare_default"
for m in shared3 default; do  # the points and logs, without the artifacts
  mkdir -p "$OUT/compare_$m"
  tar -C "$WORK/compare_$m" --exclude='*.bgz' --exclude='*.safetensors' -cf - . | tar -C "$OUT/compare_$m" -xf -
done
python -m bytegolf.study.crossmodel --out "$OUT" --baseline default default="$OUT/compare_default" shared3="$OUT/compare_shared3"
# 3. repetition through the codec
mkdir -p "$WORK/flat"
python -c "from bytegolf import checkpoint as c; import sys; c.save_state_dict(c.unshare(c.load_state_dict(sys.argv[1])), sys.argv[2])" \
  "$OUT/model/model.safetensors" "$WORK/flat/model.safetensors"
for model in "$OUT/model" "$WORK/flat"; do
  for gptq in false true; do
    bytegolf run model.checkpoint="$model/model.safetensors" format=scalar format.gptq=$gptq codec=fair eval.windows=32 \
      hydra.run.dir="$WORK/rep/$(basename "$model")_gptq${gptq}_tensor"
    bytegolf run model.checkpoint="$model/model.safetensors" format=scalar format.gptq=$gptq codec=fair eval.windows=32 \
      layout=all layout.packing=byte layout.shuffle=false hydra.run.dir="$WORK/rep/$(basename "$model")_gptq${gptq}_stream"
  done
done
