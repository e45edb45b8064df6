#!/usr/bin/env bash
# GPU smoke and speed check, for a lent GPU machine (under 8 minutes). Run from the repository root:
#   bash benchmarks/gpu_smoke.sh [OUT_DIR]
# 1. CUDA training steps of every method, fp32 and bf16/fp16 autocast, on the tiny synthetic recipe.
# 2. Step time and peak memory per method at paper size (DeepLab-v2 ResNet-101, 720x1280 for both
#    domains, an upper bound of 1280x720 + 1024x512, batch 1+1), fp32 and bf16.
# 3. perturb_and_defend overhead on DeepLab-v2 ResNet-50.
# 4. DDP (torchrun) for 2 iterations when several GPUs are visible.
set -euo pipefail
OUT=${1:-${OUT:-benchmarks/results/gpu}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
for method in source_only adaptsegnet advent minent apoda; do
  for precision in fp32 bf16 fp16; do
    python -m uda_perturb train synthetic_demo --run-dir "/tmp/gpu_smoke/$method-$precision" --overwrite \
      --no-progress --set device=cuda --set method.name=$method --set train.precision=$precision \
      --set train.iters=5 --set data.eval.target_test.options.length=4 --set data.eval.source_test.options.length=4 \
      > "/tmp/gpu_smoke_$method-$precision.log" 2>&1 && echo "ok   $method $precision" || echo "FAIL $method $precision"
  done
done | tee "$OUT/smoke.txt"
cd benchmarks
# the rows of the CPU cost records: APODA against AdaptSegNet, its first attack step from the caller's graph (auto)
# and from its own forward (apoda_own), the summed rule
# (source_only, adaptsegnet, apoda and apoda+random are also the step times of the study gta5_cityscapes_apoda's dry run)
ROWS="source_only adaptsegnet apoda apoda_own apoda_sum apoda+random"
python speed.py --model deeplabv2_r101 --size 720 1280 --batch 1 --repeats 3 --methods $ROWS --out speed_r101_cuda
python speed.py --model deeplabv2_r101 --size 720 1280 --batch 1 --repeats 3 --methods $ROWS --amp \
  --out speed_r101_cuda_bf16
python perturb_overhead.py --backbone resnet101 --size 720 1280 --batch 1 --repeats 5 --out perturb_overhead_r101_cuda
cd ..
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -gt 1 ]; then
  torchrun --nproc_per_node "$NGPU" -m uda_perturb train synthetic_demo --run-dir /tmp/gpu_smoke/ddp --overwrite \
    --no-progress --set device=cuda --set method.name=apoda --set train.iters=4 | tee "$OUT/ddp.txt"
fi
cp benchmarks/results/speed_r101_cuda* benchmarks/results/perturb_overhead_r101_cuda* "$OUT"/ 2>/dev/null || true
