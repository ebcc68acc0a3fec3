#!/usr/bin/env bash
# Install beats-fairseq into fresh venvs, one per install mode, and use it from another folder:
# beats-config-dir, a 3-update fairseq-hydra-train launch of the iter1 tiny recipe, and
# beats-pipeline --dry-run. Modes: wheel (build a wheel, install it), regular (pip install .),
# editable (pip install -e ., setuptools' default editable mode), strict (editable_mode=strict),
# compat (editable_mode=compat). Usage:
#   bash scripts/test_install.sh wheel editable        # the modes to check (default: all five)
# The package is installed from a copy of this checkout's files. By default each venv reuses
# the heavy dependencies (torch, fairseq, ...) of .venv through a .pth file listing a view of
# .venv's site-packages without beats-fairseq (run scripts/setup_env.sh first); pip still installs
# beats-fairseq itself, in the mode under test, and anything else it needs. FULL=1 installs
# everything into each venv instead (about 5 GB and a few minutes per mode).
set -euo pipefail
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0; fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
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

if [ "${FULL:-0}" != 1 ]; then
  BASE_SITE=$("$REPO/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || {
    echo "[install-test] no .venv: run scripts/setup_env.sh first (or FULL=1)" >&2; exit 1; }
  mkdir -p "$WORK/deps"
  for entry in "$BASE_SITE"/*; do
    case "$(basename "$entry")" in
      beats_fairseq*|__editable__*|*.pth|hydra_plugins|pip|pip-*|setuptools|setuptools-*|_distutils_hack) ;;
      *) ln -s "$entry" "$WORK/deps/" ;;
    esac
  done
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
  if [ "${FULL:-0}" != 1 ]; then
    echo "$WORK/deps" >"$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/beats_install_test_deps.pth"
    # fairseq's console script, as pip writes it (fairseq itself comes from .venv here)
    printf '#!%s\nimport sys\nfrom fairseq_cli.hydra_train import cli_main\nsys.exit(cli_main())\n' \
      "$venv/bin/python" >"$venv/bin/fairseq-hydra-train"
    chmod +x "$venv/bin/fairseq-hydra-train"
  fi
  if [ "$mode" = wheel ]; then
    "$venv/bin/python" -m pip wheel --no-deps -w "$WORK/wheels" "$WORK/src" >"$WORK/$mode.log" 2>&1 \
      || { tail -n 30 "$WORK/$mode.log" >&2; exit 1; }
    install=("$(ls "$WORK"/wheels/beats_fairseq-*.whl)")
  fi
  "$venv/bin/python" -m pip install "${install[@]}" >>"$WORK/$mode.log" 2>&1 || { tail -n 30 "$WORK/$mode.log" >&2; exit 1; }
  log "$mode: installed in $((SECONDS - start)) s"
  (
    cd "$WORK/elsewhere"
    export PATH="$venv/bin:$PATH" OMP_NUM_THREADS=1
    [ -f demo/train.tsv ] || beats-make-demo-data --out demo --num-train 24 --num-valid 8 --num-test 8 >/dev/null
    dir=$(beats-config-dir beats_iter1)
    case "$mode" in wheel|regular) [[ "$dir" == "$venv"/* ]] ;; *) [[ "$dir" == "$WORK/src"/* ]] ;; esac \
      || { echo "[install-test] $mode: beats-config-dir beats_iter1 gave $dir" >&2; exit 1; }
    fairseq-hydra-train --config-dir "$dir" --config-name tiny task.data=demo optimization.max_update=3 \
      dataset.batch_size=4 common.log_interval=1 checkpoint.save_dir="run_$mode/checkpoints" \
      dataset.validate_interval_updates=3 checkpoint.save_interval_updates=3 >"$WORK/${mode}_train.log" 2>&1 \
      || { tail -n 30 "$WORK/${mode}_train.log" >&2; exit 1; }
    grep -q "num_updates.*3" "$WORK/${mode}_train.log" && [ -f "run_$mode/checkpoints/checkpoint_last.pt" ] \
      || { tail -n 30 "$WORK/${mode}_train.log" >&2; echo "[install-test] $mode: no 3 updates" >&2; exit 1; }
    if grep -q "Please install tensorboardX" "$WORK/${mode}_train.log"; then
      echo "[install-test] $mode: tensorboardX is missing" >&2; exit 1
    fi
    beats-pipeline --data demo --out "pipeline_$mode" --dry-run >"$WORK/${mode}_dry.log" 2>&1 \
      && [ -f "pipeline_$mode/iter2/stage.yaml" ] || { tail -n 30 "$WORK/${mode}_dry.log" >&2; exit 1; }
  ) || { echo "[install-test] $mode: FAILED (logs above)" >&2; exit 1; }
  log "$mode: ok (3 updates and beats-pipeline --dry-run from another folder) in $((SECONDS - start)) s"
  rm -rf "$venv"
done
log "all passed: ${MODES[*]}"
