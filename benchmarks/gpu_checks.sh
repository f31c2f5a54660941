#!/usr/bin/env bash
# The GPU checks of one lent CUDA machine, as one command (its time is short and counted):
#   bash benchmarks/gpu_checks.sh OUT_DIR            # on the GPU machine, under 10 minutes
#   SMOKE=1 bash benchmarks/gpu_checks.sh OUT_DIR    # here, on the CPU: the same steps, tiny
# 1. installs this checkout into the machine's own torch (no downloads: --no-deps),
# 2. the `cuda`-marked tests, each with a time limit,
# 3. benchmarks/bench_gpu.py (SMCP step overhead, a GPU latency table, measured speedups).
# Every step writes its log to OUT_DIR and has its own timeout, so a failing or slow step
# leaves the others' results; the exit status is the first failing step's.
set -u
out=${1:?usage: gpu_checks.sh OUT_DIR}
mkdir -p "$out"
: > "$out/steps.txt"  # this run's steps only (break61 #6: a rerun listed the last run's too)
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
status=0
step() {  # step NAME SECONDS COMMAND...: run with a timeout, log to OUT_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - started)) s (limit $limit s)" | tee -a "$out/steps.txt"
    [ "$rc" -ne 0 ] && [ "$status" -eq 0 ] && status=$rc
    return 0
}

{
    date -u
    nvidia-smi -L 2>&1 || echo "no nvidia-smi"
    "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
        torch.backends.cudnn.version(), 'device', torch.cuda.get_device_name() if
        torch.cuda.is_available() else 'none')"
    nproc
} > "$out/machine.txt" 2>&1

if [ -z "${SMOKE:-}" ]; then
    # (530 s in all: a lease's command runs 600 s at most, and its start counts too)
    step install 30 "$py" -m pip install -q --no-deps --no-build-isolation -e .
    step cuda_tests 80 "$py" -m pytest -q -m cuda -p no:cacheprovider --timeout 60 -rs tests
    step bench_gpu 420 "$py" benchmarks/bench_gpu.py --out "$out/gpu"
else
    step bench_gpu 300 "$py" benchmarks/bench_gpu.py --device cpu --smoke --threads 1 --out "$out/gpu"
    step cuda_tests 300 "$py" -m pytest -q -m cuda -p no:cacheprovider -rs tests
fi
cat "$out/steps.txt"
exit "$status"
