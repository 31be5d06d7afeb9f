"""Unpack the DALI wheels (and their dependencies) into a site-packages folder a lent GPU can put on
PYTHONPATH, keeping the GPU code for one architecture only, so the set fits in fewer device calls.

NVIDIA's libraries carry their CUDA kernels as fat binaries: one compressed ELF per architecture
(DALI 2.4: sm_75, 80, 90, 100, 110, 120) plus PTX for the newest.  A GPU runs only the ELF of its
own architecture (SASS is not portable across major versions) or PTX at or below it, so for an
H100/H200 every other entry is dead weight: ~60 MB of incompressible data in libdali_operators.so
alone.  This zeroes those entries' payloads in place (headers, sizes and offsets untouched: the
runtime still sees the full table and picks sm_90), which makes them compress to nothing.

    python bench/slim_dali.py /tmp/daliwhl /tmp/dali_site --sm 90
    bash bench/carry_parts.sh split /tmp/dali_site .parts 56

Host code is untouched (only symbol tables are stripped): the DALI CPU tests pass with the slimmed
folder on PYTHONPATH.  Not yet run on a GPU: the CUDA driver is expected to read only the entry it
selects, as it does when a library carries architectures the GPU lacks (cuobjdump, which parses
every entry of an architecture it is asked to dump, calls the zeroed ones invalid ELF).  If DALI's
GPU operators fail to load on the device, carry the unslimmed wheels instead (5 parts).
"""
from __future__ import annotations

import argparse
import re
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
KIND_PTX, KIND_ELF = 1, 2


def elf_sections(data: bytes) -> dict[str, tuple[int, int]]:
    """ELF64 section name -> (file offset, size)."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_at = headers[shstrndx][4]
    out = {}
    for name, _, _, _, offset, size in headers:
        end = data.index(b"\0", names_at + name)
        out[data[names_at + name:end].decode()] = (offset, size)
    return out


def keep_entry(kind: int, sm: int, target: int) -> bool:
    """What a GPU of compute capability `target` may load: its own ELF, or PTX it can JIT."""
    return sm == target if kind == KIND_ELF else sm <= target


def fatbin_entries(data: bytes | bytearray, offset: int, size: int, where: str = "fat binary"):
    """(kind, sm, payload offset, payload size) of every entry of the fat binaries that fill
    data[offset:offset + size]; raises on a layout it does not recognise."""
    pos, end = offset, offset + size
    while pos < end:
        magic, _, header_size, fat_size = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:
            if data[pos:pos + 8] == bytes(8):  # alignment padding between fat binaries
                pos += 8
                continue
            raise ValueError(f"{where}: unexpected bytes at +{pos - offset} (not a fat binary)")
        entry, fat_end = pos + header_size, pos + header_size + fat_size
        while entry < fat_end:
            kind, _, entry_header, padded = struct.unpack_from("<HHIQ", data, entry)
            sm, = struct.unpack_from("<I", data, entry + 28)
            if kind not in (KIND_PTX, KIND_ELF):
                raise ValueError(f"{where}: unknown fat-binary entry kind {kind}")
            yield kind, sm, entry + entry_header, padded
            entry += entry_header + padded
        if entry != fat_end:
            raise ValueError(f"{where}: fat-binary entries overrun their container")
        pos = fat_end


def _slim_section(data: bytearray, offset: int, size: int, target: int, where: str) -> tuple[int, int]:
    """Zero the payloads of the entries a `target` GPU cannot use.  Returns (entries kept, bytes zeroed)."""
    entries = list(fatbin_entries(data, offset, size, where))  # the whole layout checked before any write
    kept = zeroed = 0
    for kind, sm, payload, length in entries:
        if keep_entry(kind, sm, target):
            kept += 1
        else:
            data[payload:payload + length] = bytes(length)
            zeroed += length
    return kept, zeroed


def slim_fatbins(path: Path, target: int) -> tuple[int, int]:
    """Zero the payload of every fat-binary entry a `target` GPU cannot use.  Returns (entries kept,
    bytes zeroed).  The file is rewritten only if something changed; a layout it does not recognise
    raises before anything is written."""
    data = bytearray(path.read_bytes())
    if data[:5] != b"\x7fELF\x02":  # 64-bit ELF only
        return 0, 0
    kept = zeroed = 0
    sections = elf_sections(bytes(data))
    # .nv_fatbin: the kernels the runtime loads; __nv_relfatbin: relocatable device code kept for
    # device linking (same container format).
    for name in (".nv_fatbin", "__nv_relfatbin"):
        if name in sections:
            k, z = _slim_section(data, *sections[name], target, f"{path}:{name}")
            kept, zeroed = kept + k, zeroed + z
    if zeroed:
        path.write_bytes(bytes(data))
    return kept, zeroed


def _unused(path: Path, root: Path, pythons: set[str]) -> bool:
    """Command-line tools of the NVIDIA packages, and extension modules for other Pythons."""
    if "bin" in path.relative_to(root).parts[:-1]:
        return True
    tag = re.search(r"cpython-(3\d+)t?-", path.name)
    return tag is not None and tag.group(1) not in pythons


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheels", type=Path, help="folder of .whl files (DALI and its dependencies)")
    parser.add_argument("out", type=Path, help="site-packages folder to create")
    parser.add_argument("--sm", type=int, default=90, help="compute capability to keep (90: H100/H200)")
    parser.add_argument("--pythons", nargs="+", default=["312", "311"],
                        help="CPython versions whose extension modules to keep (the device image runs 3.12)")
    args = parser.parse_args(argv)
    strip = shutil.which("strip")  # symbol tables are not needed to load a shared library
    wheels = sorted(args.wheels.glob("*.whl"))
    if not wheels:
        sys.exit(f"slim_dali: no .whl files in {args.wheels}")
    args.out.mkdir(parents=True, exist_ok=True)
    total_zeroed = 0
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(args.out)
            names = archive.namelist()
        for name in names:
            path = args.out / name
            if not path.is_file():
                continue
            if _unused(path, args.out, set(args.pythons)):
                path.unlink()
            elif ".so" in path.name:
                kept, zeroed = slim_fatbins(path, args.sm)
                if zeroed:
                    print(f"{name}: kept {kept} entries, zeroed {zeroed / 1e6:.1f} MB")
                total_zeroed += zeroed
                if strip:
                    subprocess.run([strip, "--strip-unneeded", str(path)], check=True)
    print(f"slim_dali: {len(wheels)} wheels into {args.out}, {total_zeroed / 1e6:.0f} MB of other architectures zeroed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
