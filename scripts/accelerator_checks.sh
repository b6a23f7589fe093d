#!/usr/bin/env bash
# The accelerator checks of the training-loop and mixed-precision issues, in one run on a GPU
# machine (the `device` tool runs it from the repository root; results go under $OUT):
#   1. the test suite's fast tests on the GPU (cuDNN attention included);
#   2. the training-throughput study in float32 and bfloat16, with the PyTorch peers;
#   3. the layer study in bfloat16 (cuDNN flash attention at n >= 4096, d_head 128).
# Usage: OUT=results bash scripts/accelerator_checks.sh   (about 8 minutes on an H100/H200)
set -uo pipefail
OUT=${OUT:-accelerator-results}
mkdir -p "$OUT"
python -m pip install --quiet -e ".[test,torch,cuda12]" 2>&1 | tail -2
python -c "import jax; print(jax.devices())" | tee "$OUT/devices.txt"
timeout 150 python -m pytest -q -x -m "not slow" tests/test_transformer.py tests/test_precision.py tests/test_attention.py \
  > "$OUT/pytest.txt" 2>&1; echo "pytest rc=$?" >> "$OUT/pytest.txt"
for dtype in float32 bfloat16; do
  timeout 240 python benchmark.py train --device gpu --dtype "$dtype" --peer torch --out "$OUT/train-$dtype" \
    > "$OUT/train-$dtype.log" 2>&1
done
timeout 120 python benchmark.py layers --device gpu --dtype bfloat16 --out "$OUT/layers-bf16" > "$OUT/layers-bf16.log" 2>&1
tail -n 30 "$OUT"/*.log "$OUT/pytest.txt"
