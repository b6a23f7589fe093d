#!/usr/bin/env bash
# The accelerator checks in one run on a GPU machine that reaches no package registry (the device
# tool's H100/H200: its image, scripts/device_image_packages.txt, has Python 3.12, JAX with the
# CUDA plugin, flax, optax, orbax, torch). It installs nothing from a registry: the project with
# --no-deps, the packages the image lacks from the wheels in .whl/ (scripts/device_wheels.txt says
# how to fill that ignored folder). Multi30k, copied into the ignored .data/ (2.5 MB:
# mkdir -p .data && cp -r "$ZOO_DATA_DIR/multi30k" .data/), gives the step-time check the
# configurations the planner predicts (without it: synthetic batches). Stages, each cut short at
# its budget and all within ZOO_CHECKS_SECONDS (default 450 s, inside the device tool's 8
# minutes); results, at most 8 files, under $OUT:
#   env.txt              the device, the versions, the installs;
#   step_time.txt/.json  every model x {bfloat16, float32}: the training step of train.py's recipe,
#                        the H100 prediction beside the measured step time (scripts/step_time_check.py);
#   pytest.txt           the Transformer, precision and attention tests on the GPU (cuDNN attention);
#   train-bfloat16.txt/.json  the training-throughput study of the Transformer and Bahdanau in
#                        bfloat16 with the PyTorch peers (benchmark.py train);
#   summary.txt          each stage's exit status and seconds.
# Usage (repository root):  OUT=results bash scripts/accelerator_checks.sh
#   with the device tool:   run(command="bash scripts/accelerator_checks.sh", carry=[".whl", ".data"], timeout_s=540)
#   rehearsal on a CPU:     ZOO_CHECKS_DRY_RUN=1 OUT=/tmp/checks bash scripts/accelerator_checks.sh
#     (JAX_PLATFORMS=cpu, tiny sizes, one test file; pip only resolves, with --dry-run: the
#     wheels and this machine's packages must satisfy every requirement, and nothing is installed)
set -uo pipefail
OUT=${OUT:-accelerator-results}
export PY=${PYTHON:-python3} DRY=${ZOO_CHECKS_DRY_RUN:-0}  # the image's python3 is the one with torch and JAX
DEADLINE=$((SECONDS + ${ZOO_CHECKS_SECONDS:-450}))
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false  # pytest workers share the GPU
if [ "$DRY" = 1 ]; then export JAX_PLATFORMS=cpu; fi

# stage NAME BUDGET_S COMMAND...: runs COMMAND for at most BUDGET_S seconds, never past the deadline
stage() {
  local name=$1 budget=$2 start=$SECONDS left=$((DEADLINE - SECONDS))
  shift 2
  [ "$budget" -gt "$left" ] && budget=$left
  if [ "$budget" -lt 20 ]; then echo "$name: skipped, ${left}s left" >> "$OUT/summary.txt"; return; fi
  timeout -k 5 "$budget" "$@"  # the training loop stops gracefully on SIGTERM: SIGKILL 5 s later
  echo "$name: rc=$? in $((SECONDS - start))s (budget ${budget}s)" >> "$OUT/summary.txt"
}

install() {
  nvidia-smi -L 2>&1 || true
  "$PY" --version
  if [ "$DRY" = 1 ]; then
    "$PY" -m pip install --dry-run --no-index --find-links .whl -r scripts/device_wheels.txt
  else
    "$PY" -m pip install --no-index --find-links .whl -r scripts/device_wheels.txt \
      || "$PY" -m pip install --no-index --no-deps .whl/*.whl  # what the image misses shows above
    "$PY" -m pip install --no-index --no-deps --no-build-isolation -e .
  fi
  "$PY" - <<'EOF'
import importlib.metadata as m
import jax
for name in ("jax", "jaxlib", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "grain", "tyro", "torch", "zoo"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "not installed")
print("devices:", jax.devices(), jax.devices()[0].device_kind)
EOF
}

export -f install
stage install 90 bash -c install > "$OUT/env.txt" 2>&1
if [ "$DRY" = 1 ]; then
  stage step_time 240 "$PY" scripts/step_time_check.py --quick --models transformer --dtypes float32 --min-seconds 0.2 \
    --data-dir .data --output "$OUT/step_time.json" > "$OUT/step_time.txt" 2>&1
  stage pytest 120 "$PY" -m pytest -q -x -n 0 -p no:cacheprovider tests/test_lowering.py -k cudnn > "$OUT/pytest.txt" 2>&1
  train_args=(--quick --models transformer)
else
  stage step_time 240 "$PY" scripts/step_time_check.py --data-dir .data --output "$OUT/step_time.json" \
    > "$OUT/step_time.txt" 2>&1
  stage pytest 100 "$PY" -m pytest -q -x -n 4 -p no:cacheprovider -m "not slow" \
    tests/test_transformer.py tests/test_precision.py tests/test_attention.py > "$OUT/pytest.txt" 2>&1
  train_args=(--models transformer bahdanau --device gpu)
fi
train_out=$(mktemp -d)
stage train 150 "$PY" benchmark.py train "${train_args[@]}" --dtype bfloat16 --peer torch --out "$train_out" \
  > "$OUT/train-bfloat16.txt" 2>&1
cp "$train_out/train.json" "$OUT/train-bfloat16.json" 2>/dev/null
tail -n 20 "$OUT/step_time.txt" "$OUT/pytest.txt" "$OUT/train-bfloat16.txt" "$OUT/summary.txt"
