#!/usr/bin/env bash
# Install beats-fairseq into fresh venvs, one per install mode, from its package metadata (pip
# resolves install_requires: nothing is borrowed from .venv), and use it from another folder:
# beats-config-dir, a 3-update fairseq-hydra-train launch of the iter1 tiny recipe, and
# beats-pipeline --dry-run. Modes: wheel (build a wheel, install it), regular (pip install .),
# editable (pip install -e ., setuptools' default editable mode), strict (editable_mode=strict),
# compat (editable_mode=compat). Usage:
#   bash scripts/test_install.sh wheel editable           # the modes to check (default: all five)
#   bash scripts/test_install.sh --torch 2.8.0 wheel      # torch and torchaudio 2.8.0 installed first:
#                                                         # the install must keep them
# Without --torch, pip picks the newest torch that install_requires allows. Each venv holds a full
# torch (a few GB) and is removed when its mode has passed.
set -euo pipefail
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TORCH=""
if [ "${1:-}" = --torch ]; then
  [ -n "${2:-}" ] || { echo "[install-test] --torch needs a version, e.g. --torch 2.8.0" >&2; exit 2; }
  TORCH=$2; shift 2
fi
MODES=("$@")
[ ${#MODES[@]} -gt 0 ] || MODES=(wheel regular editable strict compat)
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/beats_install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
log() { echo "[install-test] $*"; }

# A copy of the checkout's files (what a clone has), so that builds leave nothing in the checkout.
mkdir -p "$WORK/src"
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar cf - 2>/dev/null) | tar xf - -C "$WORK/src"
else
  (cd "$REPO" && tar cf - --exclude=./.venv --exclude=./runs --exclude=./demo_data --exclude=./build .) | tar xf - -C "$WORK/src"
fi
mkdir -p "$WORK/elsewhere"

for mode in "${MODES[@]}"; do
  case "$mode" in
    wheel) install=() ;;
    regular) install=("$WORK/src") ;;
    editable) install=(-e "$WORK/src") ;;
    strict) install=(-e "$WORK/src" --config-settings editable_mode=strict) ;;
    compat) install=(-e "$WORK/src" --config-settings editable_mode=compat) ;;
    *) echo "[install-test] unknown mode $mode (wheel, regular, editable, strict, compat)" >&2; exit 2 ;;
  esac
  start=$SECONDS
  venv="$WORK/venv_$mode"
  "$PYTHON" -m venv "$venv"
  if [ -n "$TORCH" ]; then
    "$venv/bin/python" -m pip install "torch==$TORCH" "torchaudio==$TORCH" >"$WORK/$mode.log" 2>&1 \
      || { tail -n 30 "$WORK/$mode.log" >&2; echo "[install-test] $mode: could not install torch $TORCH" >&2; exit 1; }
  fi
  if [ "$mode" = wheel ]; then
    "$venv/bin/python" -m pip wheel --no-deps -w "$WORK/wheels" "$WORK/src" >>"$WORK/$mode.log" 2>&1 \
      || { tail -n 30 "$WORK/$mode.log" >&2; exit 1; }
    install=("$(ls "$WORK"/wheels/beats_fairseq-*.whl)")
  fi
  "$venv/bin/python" -m pip install "${install[@]}" >>"$WORK/$mode.log" 2>&1 || { tail -n 30 "$WORK/$mode.log" >&2; exit 1; }
  "$venv/bin/python" -m pip check >>"$WORK/$mode.log" 2>&1 || { tail -n 10 "$WORK/$mode.log" >&2; exit 1; }
  versions=$("$venv/bin/python" -c 'import torch, torchaudio; print(torch.__version__.split("+")[0], torchaudio.__version__.split("+")[0])')
  if [ -n "$TORCH" ] && [ "$versions" != "$TORCH $TORCH" ]; then
    echo "[install-test] $mode: installing beats-fairseq replaced torch/torchaudio $TORCH by $versions" >&2; exit 1
  fi
  log "$mode: installed in $((SECONDS - start)) s (torch, torchaudio: $versions)"
  (
    cd "$WORK/elsewhere"
    export PATH="$venv/bin:$PATH" OMP_NUM_THREADS=1
    [ -f demo/train.tsv ] || beats-make-demo-data --out demo --num-train 24 --num-valid 8 --num-test 8 >/dev/null
    dir=$(beats-config-dir beats_iter1)
    case "$mode" in wheel|regular) [[ "$dir" == "$venv"/* ]] ;; *) [[ "$dir" == "$WORK/src"/* ]] ;; esac \
      || { echo "[install-test] $mode: beats-config-dir beats_iter1 gave $dir" >&2; exit 1; }
    fairseq-hydra-train --config-dir "$dir" --config-name tiny task.data=demo optimization.max_update=3 \
      dataset.batch_size=4 common.log_interval=1 checkpoint.save_dir="run_$mode/checkpoints" \
      dataset.validate_interval_updates=3 checkpoint.save_interval_updates=3 common.tensorboard_logdir="tb_$mode" \
      >"$WORK/${mode}_train.log" 2>&1 \
      || { tail -n 30 "$WORK/${mode}_train.log" >&2; exit 1; }
    grep -q "num_updates.*3" "$WORK/${mode}_train.log" && [ -f "run_$mode/checkpoints/checkpoint_last.pt" ] \
      || { tail -n 30 "$WORK/${mode}_train.log" >&2; echo "[install-test] $mode: no 3 updates" >&2; exit 1; }
    if grep -q "Please install tensorboardX" "$WORK/${mode}_train.log" || ! ls "tb_$mode"/train/events.* >/dev/null 2>&1; then
      echo "[install-test] $mode: no TensorBoard events in tb_$mode/train (is tensorboardX missing?)" >&2; exit 1
    fi
    beats-pipeline --data demo --out "pipeline_$mode" --dry-run >"$WORK/${mode}_dry.log" 2>&1 \
      && [ -f "pipeline_$mode/iter2/stage.yaml" ] || { tail -n 30 "$WORK/${mode}_dry.log" >&2; exit 1; }
  ) || { echo "[install-test] $mode: FAILED (logs above)" >&2; exit 1; }
  log "$mode: ok (3 updates and beats-pipeline --dry-run from another folder) in $((SECONDS - start)) s"
  rm -rf "$venv"
done
log "all passed: ${MODES[*]}"
