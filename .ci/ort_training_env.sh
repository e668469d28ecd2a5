#!/usr/bin/env bash
# The second environment: onnxruntime-training 1.19.2 for `--backend ort-training`, `export-artifacts` and
# the cross-check tests in tests/ort_training/ (docs/ort-training.md).
#
#   bash .ci/ort_training_env.sh [VENV]      # default: .venv-ort-training in the checkout (git-ignored)
#
# onnxruntime-training replaces the `onnxruntime` module and exists only for Python <= 3.11, so it cannot
# share cnnspec's main environment. Idempotent: an environment that already imports it is only refreshed
# (cnnspec re-linked), not rebuilt. scikit-learn is there for the digits data of the tests.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$root/.venv-ort-training}
python=${CNNSPEC_ORT_PYTHON:-python3.11}
packages=(onnxruntime-training-cpu==1.19.2 "onnx>=1.21,<1.24" "numpy>=1.26" "pydantic>=2.6" "pyyaml>=5.4"
          "typer>=0.12" "rich>=13" "pillow>=12.2" pytest scikit-learn)

ready() {
  [ -x "$venv/bin/python" ] && "$venv/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
sys.exit(0 if m.version("onnxruntime-training-cpu") == "1.19.2" and m.version("scikit-learn") else 1)
PY
}

if ! ready; then
  "$python" -c 'import sys; sys.exit(sys.version_info[:2] > (3, 11))' || {
    echo "error: onnxruntime-training 1.19.2 needs Python <= 3.11; set CNNSPEC_ORT_PYTHON to one" >&2; exit 1; }
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}"
fi
# cnnspec itself without its dependencies: they would pull the current onnxruntime over the training build.
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -e "$root"
# The marker tells tests/ort_training that this environment must have a working onnxruntime-training.
touch "$venv/.cnnspec-ort-training-env"
"$venv/bin/python" -c 'import onnxruntime, cnnspec; print("ort-training env:", onnxruntime.__version__, "cnnspec", cnnspec.__version__)'
