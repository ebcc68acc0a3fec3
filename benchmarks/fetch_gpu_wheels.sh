#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu_check.sh installs on a GPU machine without network:
# fairseq (ve-fairseq), soundfile, scikit-learn and the dependencies a torch image lacks, for CPython 3.12, manylinux
# x86_64, at the versions of a local environment (default: .venv, where the tests pass).
#
#   bash benchmarks/fetch_gpu_wheels.sh DIR [--python-version 3.12] [--from-python .venv/bin/python] [--only "NAME ..."]
#
# --only: just these packages (still at the local versions), for an image that has the rest; e.g. an
# image with numpy, scipy, scikit-learn, lxml, regex, sacrebleu, PyYAML and Cython but no fairseq:
#   --only "ve-fairseq hydra-core omegaconf antlr4-python3-runtime bitarray soundfile cffi pycparser"
#
# Pure-Python packages published only as source (antlr4-python3-runtime 4.9.3, needed by
# hydra-core) are built into py3-none-any wheels with `pip wheel`. Copy DIR to the GPU machine
# and run: bash benchmarks/gpu_check.sh --wheels DIR --oracle ORACLE_DIR
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
[[ $# -ge 1 && $1 != -h && $1 != --help ]] || { usage; [[ $# -ge 1 ]] && exit 0 || exit 2; }
DIR=$1; shift
PYVER=3.12
REPO=$(cd "$(dirname "$0")/.." && pwd)
FROM=$REPO/.venv/bin/python
ONLY=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --python-version) PYVER=$2; shift 2 ;;
    --from-python) FROM=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    *) echo "fetch_gpu_wheels.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -x $FROM ]] || { echo "fetch_gpu_wheels.sh: $FROM not found: run scripts/setup_env.sh or pass --from-python" >&2; exit 2; }

# fairseq, audio reading and the probe's scikit-learn with all their dependencies, as installed in
# $FROM, less torch, torchaudio and what they pull in (the GPU image has those)
ROOTS="ve-fairseq soundfile scikit-learn"
BASE="torch torchaudio"
SOURCE_ONLY="antlr4-python3-runtime"
PINS=$("$FROM" - "$ROOTS" "$BASE" <<'PY'
import importlib.metadata as md, re, sys

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

def closure(roots):
    seen, todo = {}, [norm(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[name] = f"{dist.metadata['Name']}=={dist.version}"
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            todo.append(norm(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0]))
    return seen

base = closure(sys.argv[2].split())
wanted = closure(sys.argv[1].split())
print(" ".join(pin for name, pin in sorted(wanted.items()) if name not in base or name == "numpy"))
PY
)
mkdir -p "$DIR"
for pin in $PINS; do
  name=${pin%%==*}
  key=$(echo "$name" | tr 'A-Z_' 'a-z-')
  if [[ -n $ONLY && " $(echo "$ONLY" | tr 'A-Z_' 'a-z-') " != *" $key "* ]]; then continue; fi
  echo "[fetch] $pin" >&2
  if [[ " $SOURCE_ONLY " == *" $key "* ]]; then
    "$FROM" -m pip wheel -q --no-deps -w "$DIR" "$pin"
  else
    "$FROM" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$DIR" "$pin"
  fi
done
echo "[fetch] $(ls "$DIR"/*.whl | wc -l) wheels in $DIR" >&2
