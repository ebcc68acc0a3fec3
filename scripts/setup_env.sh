#!/usr/bin/env bash
# Create .venv in the repository and install beats-fairseq (editable) with the exact versions of
# constraints.txt: torch 2.11.0, torchaudio 2.11.0, ve-fairseq 0.12.3 (import name fairseq),
# soundfile, numpy, scikit-learn, tqdm, tensorboardX, matplotlib, and for the tests pytest, pytest-xdist, onnx,
# onnxruntime, onnxscript and hearvalidator (without its tensorflow dependency: it uses tensorflow
# only for TensorFlow models). Safe to run again: it only installs what is missing. Needs
# Python >= 3.11 (set PYTHON=/path/to/python3.11 to choose one).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" - <<'PY' || { echo "beats-fairseq needs Python >= 3.11 (found $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
if .venv/bin/python -c "import beats_fairseq, fairseq, torchaudio, soundfile, sklearn, pytest, xdist, tensorboardX, matplotlib, onnxruntime, onnxscript, hearvalidator" \
     >/dev/null 2>&1 && [ -x .venv/bin/beats-config-dir ] \
   && [ "$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null)" \
        = "$(sed -n 's/^torch==//p' constraints.txt)" ]; then
  echo "[setup] .venv is ready"
  exit 0
fi
echo "[setup] installing dependencies into .venv (about 1-2 minutes; log: .venv/install.log)"
{
  .venv/bin/python -m pip install --upgrade pip
  .venv/bin/python -m pip install -e ".[test]" -c constraints.txt --config-settings editable_mode=compat
  .venv/bin/python -m pip install --no-deps "hearvalidator==2021.0.2"
} >.venv/install.log 2>&1 || { tail -n 40 .venv/install.log >&2; echo "[setup] install failed: see .venv/install.log" >&2; exit 1; }
echo "[setup] done: $(.venv/bin/python -c 'import torch, fairseq; print("torch", torch.__version__, "fairseq", fairseq.__version__)' 2>/dev/null)"
