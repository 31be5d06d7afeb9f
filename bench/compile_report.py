"""Compile the fused TAP kernels for a GPU architecture on a machine without one, and report what the
compiler made of them: registers, spills (and how many spill instructions sit inside innermost
loops, where they cost on every K-step), shared memory against the architecture's limit, and whether
the GEMMs became Hopper warpgroup MMAs (wgmma) or plain mma.sync.  It finds the first things a slow
or unlaunchable kernel shows before a lent GPU's minutes are spent.

    python bench/compile_report.py                       # paper widths, T = 32 and 64, every config
    python bench/compile_report.py --tq 4 8 16 32 64 --variants 64/broadcast 128/broadcast \
        --out bench/results/compile_sm90_<date>

Needs Triton with its bundled ptxas and nvdisasm (every CUDA build of torch brings them); no GPU, no
driver.  Variants are TAP_FAST_TILE_ROWS / TAP_FAST_UV_LOAD pairs (see kernels/tap_triton.py).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter has no compiler to ask
    sys.exit("compile_report.py compiles real kernels: unset TRITON_INTERPRET")
os.environ.setdefault("TAP_FAST_AUTOTUNE", "1")  # report the GPU's autotune candidates

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernels import tap_triton  # noqa: E402

PAPER_WIDTHS = dict(H1=1024, H2=256, H3=64)
KERNELS = ("fwd", "bwd_u", "bwd_v")
# Largest shared memory one block may use (opt-in), by compute capability.
SMEM_LIMIT = {90: 232448, 89: 101376, 86: 101376, 80: 166912}
_OPERAND = {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"}


@dataclass
class KernelReport:
    kernel: str
    variant: str
    dtype: str
    bi: int
    bj: int
    bk: int
    num_warps: int
    num_stages: int
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    spills_in_inner_loops: int = 0  # LDL/STL instructions inside innermost loops: the costly ones
    shared_bytes: int = 0
    over_smem_limit: bool = False
    wgmma: int = 0
    mma_sync: int = 0
    compile_s: float = 0.0
    error: str = ""


@contextmanager
def variant_env(variant: str):
    """TAP_FAST_TILE_ROWS / TAP_FAST_UV_LOAD set from "ROWS/UV_LOAD" for the duration."""
    rows, uv_load = variant.split("/")
    saved = {k: os.environ.get(k) for k in ("TAP_FAST_TILE_ROWS", "TAP_FAST_UV_LOAD")}
    os.environ.update(TAP_FAST_TILE_ROWS=rows, TAP_FAST_UV_LOAD=uv_load)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _pointer_types(kernel: str, dtype: str) -> dict[str, str]:
    """Pointer argument -> element type, as the launchers in tap_triton.py pass them (U, V fp32)."""
    op = f"*{_OPERAND[dtype]}"
    if kernel == "fwd":
        names = dict(COS=op, W2=op, B2=op, W3=op, B3=op, W4=op, B4=op, PARTIAL="*fp32", P_OUT=op)
    else:
        names = dict(COS=op, GS=op, W2=op, B2=op, W3=op, B3=op, W4=op, B4=op, DCOS=op, DZ2_SCRATCH=op)
        names.update({name: "*fp32" for name in tap_triton._BWD_ACCUMULATORS})
    return dict(U="*fp32", V="*fp32", **names)


def kernel_source(kernel: str, dtype: str, bi: int, bj: int, config: triton.Config, widths: dict) -> ASTSource:
    """The kernel as its launcher would specialise it, ready for triton.compile."""
    jit = (tap_triton._tap_fwd_kernel if kernel == "fwd" else tap_triton._tap_bwd_kernel).fn
    constexprs = dict(BI=bi, BJ=bj, BH2=tap_triton._pad(widths["H2"]), BH3=tap_triton._pad(widths["H3"]),
                      DOT_PREC="tf32" if dtype == "fp32" else "ieee", UV_BCAST=tap_triton._uv_broadcast(),
                      **config.kwargs)
    if kernel == "fwd":
        constexprs["STORE_P"] = False
    else:
        constexprs["OWN_U"] = kernel == "bwd_u"
    pointers = _pointer_types(kernel, dtype)
    signature, attrs = {}, {}
    for index, name in enumerate(jit.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        signature[name] = pointers.get(name, "i32")
        # The JIT specialises 16-byte-aligned pointers and integers divisible by 16, as torch's
        # allocations and the paper widths are: give the compiler the same facts.
        if name in pointers or widths.get(name, 1) % 16 == 0:
            attrs[(index,)] = [["tt.divisibility", 16]]
    return ASTSource(jit, signature, constexprs=constexprs, attrs=attrs)


def _tool(name: str) -> str:
    """ptxas / nvdisasm as bundled with Triton (the versions its cubins are made with)."""
    from triton.backends.nvidia.compiler import get_ptxas

    return str(Path(get_ptxas(90).path).with_name(name))


def _ptxas_usage(ptx: str, arch: int) -> tuple[int, int, int]:
    """(registers, spill store bytes, spill load bytes) from ptxas -v on the kernel's PTX."""
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"  # wgmma needs the arch-specific target
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        log = subprocess.run([_tool("ptxas"), "-v", f"--gpu-name={gpu}", str(src), "-o", str(Path(tmp) / "k.o")],
                             capture_output=True, text=True, check=True).stderr
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return int(re.search(r"Used (\d+) registers", log).group(1)), int(spills.group(1)), int(spills.group(2))


def inner_loop_spills(cubin: bytes) -> int:
    """LDL/STL instructions inside innermost loops of the SASS.  Spills outside them (loop-invariant
    values parked once and reloaded per tile) cost little next to a tile's GEMMs; inside a K-loop
    they cost on every step.  A loop is a backward branch to a label."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([_tool("nvdisasm"), "-c", str(path)], capture_output=True, text=True, check=True).stdout
    lines = sass.splitlines()
    labels = {m.group(1): n for n, line in enumerate(lines) if (m := re.match(r"\s*\.(L_x_\d+):", line))}
    loops = [(labels[m.group(1)], n) for n, line in enumerate(lines)
             if (m := re.search(r"\bBRA\b.*\.(L_x_\d+)", line)) and labels.get(m.group(1), n) < n]
    innermost = [(a, b) for a, b in loops if not any(a < c and d < b for c, d in loops)]
    return sum(1 for a, b in innermost for line in lines[a:b + 1] if re.search(r"\b(LDL|STL)\b", line))


def compile_one(kernel: str, variant: str, dtype: str, config: triton.Config, tq: int, arch: int = 90,
                widths: dict | None = None) -> KernelReport:
    """Compile one kernel / variant / config for clip length tq (= Ts) and read off its resources."""
    widths = widths or PAPER_WIDTHS
    with variant_env(variant):
        bi, bj = tap_triton._tile_shape(tq, tq)
        report = KernelReport(kernel=kernel, variant=variant, dtype=dtype, bi=bi, bj=bj, bk=config.kwargs["BK"],
                              num_warps=config.num_warps, num_stages=config.num_stages)
        start = time.perf_counter()
        try:
            compiled = triton.compile(kernel_source(kernel, dtype, bi, bj, config, widths),
                                      target=GPUTarget("cuda", arch, 32),
                                      options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
        except Exception as exc:  # a compile failure is a result to report, not a crash of the report
            report.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
            return report
    report.compile_s = time.perf_counter() - start
    ptx = compiled.asm["ptx"]
    report.registers, report.spill_stores, report.spill_loads = _ptxas_usage(ptx, arch)
    report.spills_in_inner_loops = inner_loop_spills(compiled.asm["cubin"])
    report.shared_bytes = int(compiled.metadata.shared)
    report.over_smem_limit = report.shared_bytes > SMEM_LIMIT.get(arch, 1 << 30)
    report.wgmma = len(re.findall(r"wgmma\.mma_async", ptx))
    report.mma_sync = len(re.findall(r"\bmma\.sync", ptx))
    return report


def gpu_configs(kernel: str, widths: dict | None = None) -> list[triton.Config]:
    """The autotune candidates the GPU would try for this kernel."""
    return tap_triton._prune_configs(tap_triton._configs("fwd" if kernel == "fwd" else "bwd"),
                                     dict(widths or PAPER_WIDTHS))


def to_markdown(reports: list[KernelReport], header: str) -> str:
    lines = [header, "",
             "| kernel | variant | tile BI x BJ | BK | warps | stages | regs | spills st/ld (B) | spill instr. in "
             "inner loops | smem (KiB) | wgmma | mma.sync | compile (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        head = f"| {r.kernel} | {r.variant} | {r.bi}x{r.bj} | {r.bk} | {r.num_warps} | {r.num_stages} |"
        if r.error:
            lines.append(f"{head} **failed**: {r.error} | | | | | | |")
            continue
        smem = f"{r.shared_bytes / 1024:.0f}" + (" **over the limit**" if r.over_smem_limit else "")
        lines.append(f"{head} {r.registers} | {r.spill_stores}/{r.spill_loads} | {r.spills_in_inner_loops} | "
                     f"{smem} | {r.wgmma} | {r.mma_sync} | {r.compile_s:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability: 90 (H100/H200), 80 (A100)")
    parser.add_argument("--tq", type=int, nargs="+", default=[32, 64], help="clip lengths (tile shapes follow them)")
    parser.add_argument("--dtype", choices=sorted(_OPERAND), default="bf16")
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS))
    parser.add_argument("--variants", nargs="+", default=["64/broadcast"], help="TILE_ROWS/UV_LOAD pairs")
    parser.add_argument("--out", type=Path, help="also write <out>.md and <out>.json")
    args = parser.parse_args(argv)

    jobs = [(kernel, variant, tq, config) for kernel in args.kernels for variant in args.variants
            for tq in args.tq for config in gpu_configs(kernel)]
    reports = []
    for n, (kernel, variant, tq, config) in enumerate(jobs, start=1):
        print(f"[{n}/{len(jobs)}] {kernel} {variant} T={tq} {config}", file=sys.stderr, flush=True)
        reports.append(compile_one(kernel, variant, args.dtype, config, tq, args.arch))
    header = (f"# Fused TAP kernels compiled for sm_{args.arch} without a GPU: Triton {triton.__version__}, {args.dtype}, "
              f"H1-H2-H3 = {PAPER_WIDTHS['H1']}-{PAPER_WIDTHS['H2']}-{PAPER_WIDTHS['H3']}, T = "
              f"{', '.join(map(str, args.tq))}; {_dt.date.today()}, commit {os.environ.get('TAP_FAST_COMMIT', 'unknown')}")
    text = to_markdown(reports, header)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(dict(
            triton=triton.__version__, arch=args.arch, dtype=args.dtype, widths=PAPER_WIDTHS,
            date=str(_dt.date.today()), commit=os.environ.get("TAP_FAST_COMMIT", "unknown"),
            reports=[asdict(r) for r in reports]), indent=1))
    return 1 if any(r.error or r.over_smem_limit for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
