#!/usr/bin/env bash
# The Keras environment: keras 3 on the JAX CPU backend, for tests/keras_env/, which prove `cnnspec import`
# exact against Keras itself (random models and keras.applications, saved, imported, compared with predict).
#
#   bash .ci/keras_env.sh [VENV]      # default: .venv-keras in the checkout (git-ignored)
#
# Keras is never a dependency of cnnspec (import reads the files without it), so it lives in its own
# environment. Idempotent: an environment that already imports keras and jax is only refreshed (cnnspec
# re-linked), not rebuilt.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$root/.venv-keras}
python=${CNNSPEC_KERAS_PYTHON:-python3}
packages=("keras>=3.3,<4" "jax[cpu]>=0.4.26" "h5py>=3.10" pytest)

ready() {
  [ -x "$venv/bin/python" ] && "$venv/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m, sys
sys.exit(0 if m.version("keras").startswith("3.") and m.version("jax") and m.version("h5py") else 1)
PY
}

if ! ready; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}"
fi
# cnnspec with its own dependencies (onnx, onnxruntime, ...) and the keras extra.
"$venv/bin/pip" install --quiet --disable-pip-version-check -e "$root[keras]"
# The marker tells tests/keras_env that this environment must have a working Keras (fail, never skip).
touch "$venv/.cnnspec-keras-env"
KERAS_BACKEND=jax "$venv/bin/python" -c 'import keras, jax, onnxruntime, cnnspec; print("keras env: keras",
keras.__version__, "jax", jax.__version__, "onnxruntime", onnxruntime.__version__, "cnnspec", cnnspec.__version__)'
