#!/usr/bin/env bash
# The prepared GPU check: CUDA parity with the oracle, bf16 features, SDPA/flex attention,
# bf16/fp16/amp training through fairseq-hydra-train, BEATs-base throughput and MFU (benchmarks/gpu_check.py).
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--tiny] [--oracle DIR] [--wheels DIR] [--out DIR] [--steps ...]
#
#   --device   cuda (default) or cpu
#   --tiny     smoke mode: tiny models, a few updates (with --device cpu: the CI test)
#   --oracle   folder of the official BEATs outputs (default tests/data/oracle)
#   --wheels   folder of wheels (benchmarks/fetch_gpu_wheels.sh): packages this Python lacks
#              (fairseq, hydra, soundfile, scikit-learn, ...) are installed from it into a
#              temporary folder, with no network and without touching the system packages
#   --out      where gpu_check_<device>.json, the benchmark JSONs and the logs go (default benchmarks/results)
# Other arguments go to gpu_check.py (--steps, --logs, --updates, --train-batch, --infer-batch; see --help there).
# Python: $PYTHON, else .venv/bin/python when it exists, else python3.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
fi
WHEELS=""
ARGS=()
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --wheels) WHEELS=$(cd "$2" && pwd); shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done

NEEDED="fairseq hydra omegaconf soundfile sklearn bitarray sacrebleu"
missing=$("$PYTHON" - "$NEEDED" <<'PY'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1].split() if importlib.util.find_spec(m) is None))
PY
)
if [[ -n $missing ]]; then
  if [[ -z $WHEELS ]]; then
    echo "gpu_check.sh: $PYTHON lacks: $missing. Pass --wheels DIR (made by benchmarks/fetch_gpu_wheels.sh)." >&2
    exit 2
  fi
  SITE=$(mktemp -d "${TMPDIR:-/tmp}/beats_gpu_site.XXXXXX")
  trap 'rm -rf "$SITE"' EXIT
  echo "[gpu_check] installing from $WHEELS into $SITE (missing: $missing)" >&2
  # only the wheels whose package this Python lacks (torch's own numpy, typing_extensions, ... stay)
  WANT=$("$PYTHON" - "$WHEELS" <<'PY'
import importlib.metadata as md, pathlib, re, sys
have = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in md.distributions()}
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    name = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    if name not in have:
        print(wheel)
PY
)
  # shellcheck disable=SC2086
  PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$SITE" $WANT
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  still=$("$PYTHON" - "$NEEDED" <<'PY'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1].split() if importlib.util.find_spec(m) is None))
PY
)
  [[ -z $still ]] || { echo "gpu_check.sh: still missing after installing from $WHEELS: $still" >&2; exit 2; }
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" "$REPO/benchmarks/gpu_check.py" "${ARGS[@]}"
