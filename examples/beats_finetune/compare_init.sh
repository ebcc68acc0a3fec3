#!/usr/bin/env bash
# Fine-tuning from an iter1 checkpoint vs. the same classifier from random initialisation,
# on the demo corpus; both evaluated on the held-out test split (docs/finetune.md).
#
#   examples/beats_finetune/compare_init.sh [DATA] [OUT]
#
# DATA (default demo_data) is made by `beats-make-demo-data --out demo_data`. Environment:
#   PRETRAINED  a beats checkpoint to start from (default: pre-train examples/beats_iter1/tiny.yaml
#               into OUT/iter1 first, ~300 updates)
#   SEEDS       fine-tuning seeds (default "1 2 3"); EXTRA extra hydra overrides for both runs
# Results: one JSON line per run in OUT/results.jsonl and a summary on stdout.
set -euo pipefail
DATA=${1:-demo_data}
OUT=${2:-runs/compare_init}
SEEDS=${SEEDS:-"1 2 3"}
EXTRA=${EXTRA:-}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$OUT"

if [ -z "${PRETRAINED:-}" ]; then
  PRETRAINED=$OUT/iter1/checkpoints/checkpoint_last.pt
  if [ ! -f "$PRETRAINED" ]; then
    fairseq-hydra-train --config-dir "$HERE/../beats_iter1" --config-name tiny task.data="$DATA" \
      checkpoint.save_dir="$OUT/iter1/checkpoints" > "$OUT/iter1.log" 2>&1
  fi
fi

# The random init gets the architecture of the iter1 recipe (fine-tuning recipes hold none: with a
# checkpoint it comes from the checkpoint).
RANDOM_ARCH=$(beats-config-dir beats_iter1 --architecture tiny)
: > "$OUT/results.jsonl"
for seed in $SEEDS; do
  for init in pretrained random; do
    run=$OUT/$init-seed$seed
    if [ "$init" = pretrained ]; then path=$PRETRAINED; arch=""; else path=null; arch=$RANDOM_ARCH; fi
    # shellcheck disable=SC2086
    fairseq-hydra-train --config-dir "$HERE" --config-name tiny task.data="$DATA" \
      model.pretrained_path="$path" $arch common.seed="$seed" checkpoint.save_dir="$run/checkpoints" $EXTRA \
      > "$run.log" 2>&1
    python "$HERE/evaluate_split.py" "$run/checkpoints/checkpoint_best.pt" --data "$DATA" --split test \
      --tag "$init-seed$seed" 2>/dev/null | tee -a "$OUT/results.jsonl"
  done
done

python - "$OUT/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for init in ("pretrained", "random"):
    acc = [r["accuracy"] for r in rows if r["tag"].startswith(init)]
    m = [r["mAP"] for r in rows if r["tag"].startswith(init)]
    sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
    print(f"{init:10s} test accuracy {statistics.mean(acc):.3f} +- {sd:.3f}  mAP {statistics.mean(m):.3f}  "
          f"(runs: {', '.join(f'{a:.3f}' for a in acc)})")
PY
