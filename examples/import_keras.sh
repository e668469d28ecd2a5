#!/usr/bin/env bash
# Import a Keras model end to end, without Keras installed: the spec, its weights and the ONNX model from a
# .keras file (a small functional net with a nested model, committed in tests/fixtures/keras/), then validate
# the spec, recompile it with the imported weights (the same bytes) and classify an image with the model.
#   bash examples/import_keras.sh [OUT]        # needs h5py: pip install -e '.[keras]'
set -euo pipefail
out=${1:-out/keras-import}
mkdir -p "$out"
model=tests/fixtures/keras/graph_small.keras

echo "== import: $model"
printf 'cat\ndog\nfox\nowl\n' > "$out/labels.txt"
cnnspec import "$model" -o "$out/graph_small.yaml" --onnx "$out/graph_small.onnx" --labels "$out/labels.txt"
cat "$out/graph_small.yaml"

echo "== validate the imported spec"
cnnspec validate "$out/graph_small.yaml"

echo "== compile it with the imported weights: the same file as --onnx"
cnnspec compile "$out/graph_small.yaml" --weights "$out/graph_small.weights.npz" -o "$out/recompiled.onnx"
cmp "$out/graph_small.onnx" "$out/recompiled.onnx" && echo "identical: $out/graph_small.onnx $out/recompiled.onnx"

echo "== run it on an image"
python -c 'import sys, numpy as np; from PIL import Image
Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(sys.argv[1])' "$out/pic.png"
cnnspec run "$out/graph_small.onnx" "$out/pic.png" --top-k 2
