#!/usr/bin/env bash
# The README's main job on real data: validate every spec, compile one, train the digits spec on
# scikit-learn's handwritten digits, evaluate it on the held-out 20%, classify PNG images with it and draw
# what its convolutions compute.
set -euo pipefail
out=${1:-out}
mkdir -p "$out"

echo "== validate: every spec in specs/"
for spec in specs/*.yaml; do cnnspec validate "$spec" > /dev/null && echo "valid: $spec"; done
cnnspec validate specs/seed.yaml

echo "== compile + inspect: the seed network"
cnnspec compile specs/seed.yaml -o "$out/seed.onnx" --seed 0
cnnspec inspect "$out/seed.onnx" | tail -n 3

echo "== train: specs/digits.yaml on scikit-learn's 8x8 digits (80/20 split)"
python examples/digits_data.py "$out/digits"
cnnspec train specs/digits.yaml --data "$out/digits/train.npz" -o "$out/digits.onnx" \
  --metrics-json "$out/digits-metrics.json"

echo "== evaluate on the held-out 20%"
cnnspec evaluate "$out/digits.onnx" --data "$out/digits/test.npz"

echo "== run: classify PNG files"
cnnspec run "$out/digits.onnx" "$out/digits/images" --top-k 3

echo "== visualize: the first convolution's kernels and the feature maps of one digit (PNG files)"
cnnspec visualize "$out/digits.onnx" "$out/digits/images/test000_label7.png" -o "$out/pictures"

echo "== a graph spec: residual blocks with squeeze-excite gates (specs/digits_residual.yaml)"
cnnspec train specs/digits_residual.yaml --data "$out/digits/train.npz" -o "$out/digits_residual.onnx"
cnnspec evaluate "$out/digits_residual.onnx" --data "$out/digits/test.npz" | sed -n 1p
