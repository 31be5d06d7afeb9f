"""bench/slim_dali.py keeps exactly the GPU code an sm_90 device loads from a real fat binary.

A tiny CUDA library is built here for sm_80 and sm_90 (SASS) plus compute_80 and compute_100 (PTX).
After slimming for sm_90 the fat-binary table is unchanged, the sm_90 ELF and the compute_80 PTX are
byte for byte as before (cuobjdump extracts the same sm_90 code), and the sm_80 ELF and compute_100
PTX, which an sm_90 GPU cannot use, are zeros.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from slim_dali import KIND_ELF, KIND_PTX, elf_sections, fatbin_entries, keep_entry, slim_fatbins  # noqa: E402

NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)

SOURCE = """
__global__ void scale(float *x, float a, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= a;
}
extern "C" void launch(float *x, float a, int n) { scale<<<(n + 255) / 256, 256>>>(x, a, n); }
"""


def _cuobjdump() -> str | None:
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        tool = Path(get_ptxas(90).path).with_name("cuobjdump")
        return str(tool) if tool.exists() else None
    except Exception:
        return shutil.which("cuobjdump")


def _payloads(lib: Path) -> list[tuple[int, int, bytes]]:
    data = lib.read_bytes()
    offset, size = elf_sections(data)[".nv_fatbin"]
    return [(kind, sm, data[at:at + n]) for kind, sm, at, n in fatbin_entries(data, offset, size)]


@pytest.mark.skipif(NVCC is None or _cuobjdump() is None, reason="needs nvcc and cuobjdump")
def test_slimming_keeps_only_what_sm90_loads(tmp_path):
    src = tmp_path / "tiny.cu"
    src.write_text(SOURCE)
    lib = tmp_path / "libtiny.so"
    subprocess.run([NVCC, "-shared", "-Xcompiler", "-fPIC", "-o", str(lib), str(src),
                    "-gencode", "arch=compute_80,code=[sm_80,compute_80]",
                    "-gencode", "arch=compute_90,code=sm_90",
                    "-gencode", "arch=compute_100,code=compute_100"], check=True, capture_output=True)
    dump_sm90 = [_cuobjdump(), "-elf", "-arch", "sm_90", str(lib)]
    sm90_before = subprocess.run(dump_sm90, capture_output=True, text=True, check=True).stdout
    assert "scale" in sm90_before
    before, size = _payloads(lib), lib.stat().st_size
    assert {(kind, sm) for kind, sm, _ in before} == {(KIND_ELF, 80), (KIND_ELF, 90), (KIND_PTX, 80), (KIND_PTX, 100)}

    kept, zeroed = slim_fatbins(lib, 90)

    after = _payloads(lib)  # same table: headers, sizes and offsets untouched
    assert lib.stat().st_size == size and [e[:2] for e in after] == [e[:2] for e in before]
    for (kind, sm, old), (_, _, new) in zip(before, after):
        if (kind, sm) in ((KIND_ELF, 90), (KIND_PTX, 80)):  # what an sm_90 GPU may load
            assert new == old and any(old)
        else:
            assert not any(new), (kind, sm)
    assert kept == sum(keep_entry(k, sm, 90) for k, sm, _ in before)
    assert zeroed == sum(len(p) for k, sm, p in before if not keep_entry(k, sm, 90))
    assert subprocess.run(dump_sm90, capture_output=True, text=True, check=True).stdout == sm90_before
    assert slim_fatbins(lib, 90) == (kept, zeroed)  # the same entries again (already zero)


def test_non_elf_files_are_left_alone(tmp_path):
    text = tmp_path / "libfake.so"
    text.write_bytes(b"not an ELF file")
    assert slim_fatbins(text, 90) == (0, 0)
    assert text.read_bytes() == b"not an ELF file"
