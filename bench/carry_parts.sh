#!/usr/bin/env bash
# Carry a folder larger than one device call may (64 MiB) in parts, on consecutive calls while the
# machine stays warm: the DALI wheels (~258 MB with nvcomp and nvimgcodec) for the GPU decoding bench.
#
#   here:  bash bench/carry_parts.sh split /tmp/daliwhl .parts 56     # -> .parts/part_000, part_001, ...
#   calls: run(carry=[".parts/part_000", ".parts/part_000.sha256"], command="true"), then part_001,
#          ... each within 30 s of the last (a warm machine keeps the ignored files earlier calls carried;
#          not yet tried here: the first call's output should `ls .parts` to confirm);
#   there: bash bench/carry_parts.sh join .parts /tmp/daliwhl && python3 -m pip install -q --no-index \
#            --no-deps --target /tmp/site /tmp/daliwhl/*.whl && export PYTHONPATH=/tmp/site
# .parts/ must be ignored by git (.git/info/exclude); `join` checks the SHA-256 that `split` wrote.
set -euo pipefail
mode=${1:?split|join}
case "$mode" in
  split)
    src=${2:?source folder} parts=${3:?parts folder} mib=${4:-56}
    mkdir -p "$parts"
    rm -f "$parts"/part_*
    tar cf - -C "$src" . | split -b "${mib}M" -d -a 3 - "$parts/part_"
    cat "$parts"/part_* | sha256sum | cut -d' ' -f1 >"$parts/part_000.sha256"
    ls -l "$parts"
    ;;
  join)
    parts=${2:?parts folder} dest=${3:?destination folder}
    want=$(cat "$parts/part_000.sha256")
    got=$(cat "$parts"/part_[0-9][0-9][0-9] | sha256sum | cut -d' ' -f1)
    [[ "$got" == "$want" ]] || { echo "carry_parts: checksum mismatch (missing or broken part?)" >&2; exit 1; }
    mkdir -p "$dest"
    cat "$parts"/part_[0-9][0-9][0-9] | tar xf - -C "$dest"
    ls -l "$dest"
    ;;
  *) echo "usage: $0 split SRC PARTS [MiB] | join PARTS DEST" >&2; exit 2 ;;
esac
