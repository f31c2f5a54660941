#!/usr/bin/env bash
# The GPU checks of one lent CUDA machine, as one command (its time is short and counted):
#   bash benchmarks/gpu_checks.sh OUT_DIR            # on the GPU machine, under 10 minutes
#   SMOKE=1 bash benchmarks/gpu_checks.sh OUT_DIR    # here, on the CPU: the same steps, tiny
# 1. installs this checkout into the machine's own torch (no downloads: --no-deps),
# 2. the `cuda`-marked tests, each with a time limit,
# 3. benchmarks/bench_gpu.py (SMCP step overhead, a GPU latency table, measured speedups).
# Every step writes its log to OUT_DIR and has its own timeout, so a failing or slow step
# leaves the others' results; the exit status is the first failing step's.
# OUT_DIR must be new, empty, or hold only the files an earlier run of this script wrote there.
set -u
usage="usage: [SMOKE=1] [PYTHON=python3] bash benchmarks/gpu_checks.sh OUT_DIR"
# (break180 F7: --help was taken for OUT_DIR, a cascade of mkdir, tee and cat errors)
case "${1:-}" in
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; echo "$usage"; exit 0 ;;
    "") echo "$usage" >&2; exit 2 ;;
    -*) echo "gpu_checks.sh: unknown option $1; $usage" >&2; exit 2 ;;
esac
if [ "$#" -ne 1 ]; then
    echo "gpu_checks.sh: one OUT_DIR, got $#; $usage" >&2
    exit 2
fi
out=$1
# the first line of each text file it writes: it replaces only those, and its bench_gpu results
# (break180 F7: a user's steps.txt, machine.txt and *.log in OUT_DIR were replaced)
header="# written by benchmarks/gpu_checks.sh"
logs="install cuda_tests bench_gpu"
ours() {  # ours NAME: OUT_DIR/NAME is a file an earlier run of this script wrote
    local path="$out/$1"
    [ -f "$path" ] && [ ! -L "$path" ] || return 1
    case "$1" in
        # bench_gpu's results, by the keys bench_gpu itself reads them by (break182 F9: any
        # file holding "device_type" was taken for them)
        gpu.json) for key in meta device_type training speedups section_seconds; do
                      grep -q "\"$key\"" "$path" || return 1
                  done ;;
        gpu.md) ours gpu.json ;;                      # (bench_gpu's table, beside its results)
        steps.txt|machine.txt) [ "$(head -n 1 "$path")" = "$header" ] ;;
        *.log) case " $logs " in *" ${1%.log} "*) [ "$(head -n 1 "$path")" = "$header" ] ;;
                                  *) return 1 ;; esac ;;
        *) return 1 ;;
    esac
}
if [ -e "$out" ] || [ -L "$out" ]; then
    if [ ! -d "$out" ]; then
        echo "gpu_checks.sh: OUT_DIR $out is not a folder; choose a new or empty folder" >&2
        exit 2
    fi
    others=$(for path in "$out"/* "$out"/.*; do
        name=${path##*/}
        case "$name" in .|..) continue ;; esac
        [ -e "$path" ] || [ -L "$path" ] || continue  # (a pattern that matched nothing)
        ours "$name" || printf '%s ' "$name"
    done)
    if [ -n "$others" ]; then
        # (break184 F3: its earlier version's own files were called not its own)
        echo "gpu_checks.sh: OUT_DIR $out holds files without this script's header line" \
             "(${others% }: not written by it, or by an earlier version of it): it would" \
             "replace or mix with them; choose a new or empty folder" >&2
        exit 2
    fi
fi
mkdir -p "$out" || exit 2
echo "$header" > "$out/steps.txt"  # this run's steps only (break61 #6: a rerun listed the last run's too)
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
status=0
step() {  # step NAME SECONDS COMMAND...: run with a timeout, log to OUT_DIR/NAME.log
    local name=$1 limit=$2
    shift 2
    local started=$SECONDS
    echo "$header" > "$out/$name.log"
    timeout "$limit" "$@" >> "$out/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - started)) s (limit $limit s)" | tee -a "$out/steps.txt"
    [ "$rc" -ne 0 ] && [ "$status" -eq 0 ] && status=$rc
    return 0
}

{
    echo "$header"
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
tail -n +2 "$out/steps.txt"  # (its header line is no step: review181 F12)
exit "$status"
