#!/usr/bin/env bash
# Carry a folder larger than one device call may (64 MiB) in parts, on consecutive calls while the
# machine stays warm: the DALI set for the GPU decoding bench (bench/dali_session.sh).
#
#   here:  pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#            --platform manylinux_2_28_x86_64 -d /tmp/daliwhl nvidia-dali-cuda130==2.4.0 \
#            nvidia-libnvcomp-cu13==5.3.0.16 nvidia-nvimgcodec-cu13==0.9.0.20 astunparse==1.6.3 gast==0.7.0 \
#            makefun==1.16.0 libcst==1.9.0 nvtx==0.2.17 optree==0.20.0      # DALI and what it imports
#          python bench/slim_dali.py /tmp/daliwhl /tmp/dali_site      # ~425 MB, sm_90 code only
#          bash bench/carry_parts.sh split /tmp/dali_site .parts 56   # xz: 2 parts (~69 MB in all)
#   calls: run(carry=[".parts/part_000", ".parts/part_000.sha256"], command="bash bench/carry_parts.sh keep .parts")
#          (or bench/gpu_session.sh, which keeps them too), then
#          run(carry=[".parts/part_001"], command="... bash bench/dali_session.sh"), the second
#          within the warm window of the first. A later call does NOT see what an earlier one carried
#          (measured: .parts/part_000 was gone on the next call), but /tmp survives while the machine
#          stays warm: `keep` copies the parts to /tmp/carried_parts, and `join` looks there for any
#          part missing from the folder it is given.
#   there: bench/dali_session.sh joins them (bash bench/carry_parts.sh join .parts /tmp/dali_site).
# .parts/ must be ignored by git (.git/info/exclude); `join` checks the SHA-256 that `split` wrote and
# decompresses with Python's lzma (no xz binary needed there).
set -euo pipefail
mode=${1:?split|keep|join}
KEPT=/tmp/carried_parts
case "$mode" in
  split)
    src=${2:?source folder} parts=${3:?parts folder} mib=${4:-56}
    mkdir -p "$parts"
    rm -f "$parts"/part_*
    tar cf - -C "$src" . | xz -T0 -6 | split -b "${mib}M" -d -a 3 - "$parts/part_"
    cat "$parts"/part_[0-9][0-9][0-9] | sha256sum | cut -d' ' -f1 >"$parts/part_000.sha256"
    ls -l "$parts"
    ;;
  keep)
    parts=${2:?parts folder}
    mkdir -p "$KEPT"
    cp "$parts"/part_* "$KEPT"/ 2>/dev/null || true
    ls -l "$KEPT"
    ;;
  join)
    parts=${2:?parts folder} dest=${3:?destination folder}
    mkdir -p "$parts"
    cp -n "$KEPT"/part_* "$parts"/ 2>/dev/null || true  # parts carried on earlier calls of this machine
    want=$(cat "$parts/part_000.sha256")
    got=$(cat "$parts"/part_[0-9][0-9][0-9] | sha256sum | cut -d' ' -f1)
    [[ "$got" == "$want" ]] || { echo "carry_parts: checksum mismatch (missing or broken part?)" >&2; exit 1; }
    mkdir -p "$dest"
    cat "$parts"/part_[0-9][0-9][0-9] |
      python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)" |
      tar xf - -C "$dest"
    du -sh "$dest"
    ;;
  *) echo "usage: $0 split SRC PARTS [MiB] | keep PARTS | join PARTS DEST" >&2; exit 2 ;;
esac
