#!/usr/bin/env bash
# The CUDA checks in ONE run on a lent GPU machine (H100/H200, CUDA 13, Python 3.12 with torch, no
# onnxruntime-gpu): install the onnxruntime-gpu bundle, run the CUDA tests, train digits on CUDA end to
# end, and time training and inference on CUDA beside PyTorch eager (and training on that machine's CPUs).
#
# Here (pip works): bash ../shared/gpu/bundle-ort-gpu.sh   -> .gpu/ortgpu.part.aa, .gpu/ortgpu.part.ab, .gpu/wheels
# There, call 1 (carry .gpu/ortgpu.part.aa):  mkdir -p /tmp/parts && cp .gpu/ortgpu.part.aa /tmp/parts/
# There, call 2 at once (carry .gpu/ortgpu.part.ab and .gpu/wheels):  bash benchmarks/gpu_checks.sh
# Every step has its own time limit and the script goes on after a failure; logs land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT" /tmp/parts /tmp/site
export PYTHONUNBUFFERED=1

STEPS=${STEPS:-"machine cuda-tests train-cuda distributed-cuda digits-cuda inference-cuda precision-cuda train-cpu scaling-cpu"}  # a subset reruns fewer

step() {  # step NAME SECONDS COMMAND...: run, log to $OUT/NAME.log, report the exit status and time
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    [[ " $STEPS " == *" $name "* ]] || return 0
    echo "== $name"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    echo "== $name: exit $rc in $((SECONDS - start)) s"
}

cp .gpu/ortgpu.part.ab /tmp/parts/ 2>/dev/null
cat /tmp/parts/ortgpu.part.* | tar -C /tmp/site -xJf - || { echo "bundle missing: run call 1 first"; exit 3; }
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl || exit 4
export PYTHONPATH=/tmp/site:$PWD

step machine 30 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc;
  python3 -c "import onnxruntime as o, torch; print(o.__version__, o.get_available_providers(), torch.__version__)"'
step cuda-tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_cudagraph.py \
  tests/test_training.py::test_cuda_matches_cpu
step train-cuda 420 python3 benchmarks/bench_training.py --device cuda --seconds 2 --rounds 1 --batch-size 64,256,1024
step distributed-cuda 120 python3 -m pytest -q -p no:cacheprovider tests/test_distributed.py -k nccl
step scaling-cpu 300 python3 benchmarks/bench_scaling.py --processes 1,2,4 --threads-per-process 4 --images 8192 \
  specs/seed.yaml
step digits-cuda 90 bash -c 'python3 examples/digits_data.py /tmp/digits > /dev/null &&
  time python3 -m cnnspec train specs/digits.yaml --data /tmp/digits/train.npz -o /tmp/digits.onnx --device cuda &&
  python3 -m cnnspec evaluate /tmp/digits.onnx --data /tmp/digits/test.npz --device cuda | head -n 1 &&
  python3 -m cnnspec run /tmp/digits.onnx /tmp/digits/images --device cuda | head -n 4'
step inference-cuda 120 python3 benchmarks/bench_inference.py --device cuda --seconds 0.5 --markdown
# fp32 vs fp16 at batch 256 and batch-1 latency with/without CUDA graphs (issue 13), resnet50 included
step precision-cuda 150 python3 benchmarks/bench_inference.py --precision --device cuda --no-accuracy --seconds 1 \
  specs/seed.yaml specs/resnet18_cifar.yaml specs/resnet50.yaml
step train-cpu 60 python3 benchmarks/bench_training.py --seconds 2 --rounds 2 specs/seed.yaml
