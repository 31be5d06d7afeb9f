#!/usr/bin/env bash
# DALI on a lent GPU (issue 5), in one call once the DALI set has been carried (bench/carry_parts.sh):
# join the parts, check DALI imports beside torch, run the DALI tests (the GPU "mixed" decoder against
# the CPU one included) and the decoding benchmark (H.264 at 256 px: DALI mixed vs PyAV; the
# synthetic set per decoder; a training step with data loading on and off).  Same stage machinery as
# bench/gpu_session.sh; results packed into $OUT/results.tgz after each stage.
#
#   device: TAP_FAST_COMMIT=<sha> DEADLINE=420 bash bench/dali_session.sh
#           (.parts/ carried on this and earlier calls of the warm machine; .whl carried for PyAV)
set -u
DEADLINE=${DEADLINE:-420}
. "$(dirname "$0")/session_lib.sh"
describe_machine
install_carried_wheels
stage join_dali 90 bash bench/carry_parts.sh join .parts /tmp/dali_site ||
  { echo "DALI parts missing or broken: nothing to run" | tee -a "$LOG"; pack; exit 1; }
export PYTHONPATH=$PYTHONPATH:/tmp/dali_site
python3 -c "import torch; torch.zeros(1, device='cuda'); import nvidia.dali as d; print('DALI', d.__version__)" \
  2>&1 | tee -a "$LOG" "$WORK/env.txt"
# A warm machine after bench/gpu_session.sh has the editable install; a fresh one builds it.  Both
# imports: a working tree can hold a built _C without the install that maps tap_fast.kernels to
# kernels/ (b26c903's DALI call: one test failed with "No module named 'tap_fast.kernels'").
python3 -c "import torch, tap_fast._C, tap_fast.kernels" 2>/dev/null || build_extension ||
  { echo "build failed" | tee -a "$LOG"; pack; exit 1; }

stage dali_tests 150 python3 -m pytest -q -p no:cacheprovider --junitxml="$WORK/tests_dali.xml" \
  tests/test_dali.py tests/test_data_decode.py
# What issue 5 still lacks first: the training step with data loading on and off (and each decoder
# on the synthetic set), then the H.264 rows (DALI mixed vs PyAV, recorded on the H200 already), each
# in its own pytest session: a session cut off by its cap writes no JSON.
stage bench_decode 120 python3 -m pytest -q -p no:cacheprovider --benchmark-only bench/test_bench_decode.py \
  -k "not h264" --benchmark-json="$WORK/decode_gpu.json"
stage bench_decode_h264 180 python3 -m pytest -q -p no:cacheprovider --benchmark-only bench/test_bench_decode.py \
  -k h264 --benchmark-json="$WORK/decode_gpu_h264.json"
python3 bench/targets.py "$WORK"/*.json --out "$WORK/targets.md" >>"$LOG" 2>&1  # the issues' targets, read off
echo "== done, $(left) s of $DEADLINE left" | tee -a "$LOG"
pack
