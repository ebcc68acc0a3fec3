#!/usr/bin/env bash
# Domain adaptation at the small scale: is continuing the pre-training of a model from another
# domain better than pre-training on the new domain from scratch for as many updates, or than no
# continuation at all? (docs/pretraining.md, "Does continuing pay off on your audio?")
#
#   examples/beats_continue/domain_adaptation.sh [SOURCE_DATA] [TARGET_DATA] [OUT]
#
# defaults: ../shared/devdata/words, ../shared/devdata/drums, runs/domain_adaptation. Both folders
# need a pool.tsv (unlabelled audio); the target's train/valid/test splits are the labelled task.
#   1. source:    beats-pipeline --iterations 2 --no-eval on the source pool: the "released" model
#                 (its iter2) and the tokenizer it was pre-trained with (tokenizer_iter1).
#   2. continued: that model's pre-training continued on the target pool with that tokenizer's labels
#                 (examples/beats_continue/small.yaml, 200 updates); its evaluation has the model as
#                 it was ("start", no continuation), a random init and the fbank baseline too.
#   3. scratch:   iter1 pre-trained on the target pool from random weights with the same labels, for
#                 as many updates (examples/beats_iter1/small.yaml, shortened to 200).
# Every encoder is fine-tuned on the target with LABEL_BUDGETS clips per class, over LOOP_SEEDS loop
# seeds (each loop its own continuation, scratch pre-training, budget subsets and fine-tuning seeds).
# Environment: LOOP_SEEDS (3), EVAL_SEEDS (1 per loop), LABEL_BUDGETS (10,all), UPDATES (200), SCALE (small),
# FINETUNE (the scale's fine-tuning recipe: small, tiny or as2m; every budget is fine-tuned with it).
# Results: OUT/domain_adaptation.md and .json (domain_table.py), and each run's report in OUT/<run>/.
set -euo pipefail
SOURCE=${1:-../shared/devdata/words}
TARGET=${2:-../shared/devdata/drums}
OUT=${3:-runs/domain_adaptation}
LOOP_SEEDS=${LOOP_SEEDS:-3}
EVAL_SEEDS=${EVAL_SEEDS:-1}
LABEL_BUDGETS=${LABEL_BUDGETS:-10,all}
UPDATES=${UPDATES:-200}
SCALE=${SCALE:-small}
case $SCALE in base) FINETUNE=${FINETUNE:-as2m} ;; *) FINETUNE=${FINETUNE:-$SCALE} ;; esac
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WARMUP=$(( UPDATES / 10 ))
EVAL=(--eval finetune --eval-seeds "$EVAL_SEEDS" --label-budgets "$LABEL_BUDGETS" --loop-seeds "$LOOP_SEEDS"
      --finetune-config "$FINETUNE" --budget-finetune-config "$FINETUNE")
SCHEDULE=(optimization.max_update="$UPDATES" lr_scheduler.warmup_updates="$WARMUP"
          checkpoint.save_interval_updates="$UPDATES" dataset.validate_interval_updates="$UPDATES")

echo "[domain] 1/3 source model on $SOURCE/pool.tsv"
beats-pipeline --data "$SOURCE" --out "$OUT/source" --scale "$SCALE" --pretrain-split pool --iterations 2 --no-eval
MODEL=$OUT/source/iter2/checkpoints/checkpoint_last.pt
TOKENIZER=$OUT/source/tokenizer_iter1/checkpoints/checkpoint_last.pt

echo "[domain] 2/3 continued on $TARGET/pool.tsv for $UPDATES updates, and no continuation"
beats-pipeline --data "$TARGET" --out "$OUT/continued" --scale "$SCALE" --pretrain-split pool --iterations 1 \
    --init-from "$MODEL" --tokenizer "$TOKENIZER" "${EVAL[@]}" "${SCHEDULE[@]/#/pretrain:}"

echo "[domain] 3/3 from scratch on $TARGET/pool.tsv for $UPDATES updates"
beats-pipeline --data "$TARGET" --out "$OUT/scratch" --scale "$SCALE" --pretrain-split pool --iterations 1 \
    --tokenizer "$TOKENIZER" "${EVAL[@]}" "${SCHEDULE[@]/#/pretrain:}"

python "$HERE/domain_table.py" "$OUT"
