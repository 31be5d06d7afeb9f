# Shared by bench/gpu_session.sh and bench/dali_session.sh (source it): stages under time caps inside
# one device call, results packed after each stage so a cut-off call still returns what it measured.
# The caller sets DEADLINE (s) and may set OUT; it gets WORK (results), LOG, T0, and the functions.
OUT=${OUT:-/tmp/gpu_out}
WORK=$(mktemp -d)
T0=$(date +%s)
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 TAP_FAST_DATA_DIR=/tmp/tap_fast_data MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0

left() { echo $((DEADLINE - ($(date +%s) - T0))); }
# wait_for PID CAP: wait until background job PID ends, CAP seconds at most (it may go on after).
wait_for() {
  local pid=$1 cap=$2 t=0
  while kill -0 "$pid" 2>/dev/null && ((t < cap)); do sleep 1; t=$((t + 1)); done
  echo "== waited ${t} s for pid $pid$(kill -0 "$pid" 2>/dev/null && echo ', still running')" | tee -a "$LOG"
}
pack() { tar czf "$OUT/results.tgz" -C "$WORK" . 2>/dev/null; }
# stage NAME CAP CMD...: run CMD for at most min(CAP, time left - 15) s, log its output, pack results.
stage() {
  local name=$1 cap=$2; shift 2
  local avail=$(($(left) - 15))
  ((cap > avail)) && cap=$avail
  if ((cap < 20)); then echo "== $name: skipped, $(left) s left" | tee -a "$LOG"; return 1; fi
  echo "== $name (cap $cap s) $(date +%T)" | tee -a "$LOG"
  local t=$(date +%s)
  timeout -k 5 "$cap" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $(($(date +%s) - t)) s" | tee -a "$LOG" "$WORK/stages.txt"
  pack
  return $rc
}

# The machine, the commit and the software, first in the log and in env.txt.
describe_machine() {
  {
    echo "date $(date -u +%FT%TZ) commit ${TAP_FAST_COMMIT:-unknown}"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
    nproc
  } >"$WORK/env.txt" 2>&1
  tee -a "$LOG" <"$WORK/env.txt"
}

# Packages the image lacks, carried in .whl/ (PyAV for the synthetic set and H.264 clips, pysdtw
# for the soft-DTW comparison): installed into /tmp/site.
install_carried_wheels() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$LOG" 2>&1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
}

# The editable install with the compiled extension (--use-pep517: without it the image's pip runs
# `setup.py develop`, which fetches setuptools, and there is no network).
build_extension() {
  stage build 240 env TAP_FAST_BUILD_EXT=cuda CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} \
    python3 -m pip install --no-build-isolation --no-deps --use-pep517 -e .
}
