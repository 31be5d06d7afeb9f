r"""Compile the fused TAP kernels for a GPU architecture on a machine without one, and report what the
compiler made of them: registers, spills (and how many spill instructions sit inside innermost
loops, where they cost on every K-step), the main K-loop's length in instructions per thread,
shared memory against the architecture's limit, and whether the GEMMs became Hopper warpgroup MMAs
(wgmma) or plain mma.sync.  It finds the first things a slow
or unlaunchable kernel shows before a lent GPU's minutes are spent.

    python bench/compile_report.py                       # paper widths, T = 32 and 64, every config
    python bench/compile_report.py --tq 4 8 16 32 64 --variants 64/broadcast 128/broadcast \
        --out bench/results/compile_sm90_<date>

The kernels are compiled through the real launchers (tap_triton.precompile), so they are
specialised as a call with these shapes would specialise them (but for the work split, which
follows the SM count: 4 here); a stand-in driver tells Triton the target is sm_<arch>.  Needs Triton with its bundled ptxas and nvdisasm (every CUDA build
of torch brings them); no GPU, no CUDA driver.  Variants are TAP_FAST_TILE_ROWS / TAP_FAST_UV_LOAD
pairs (see kernels/tap_triton.py); TAP_FAST_DETERMINISTIC=0 compiles the atomic backward
(tap_scores(..., deterministic=False)) instead of the default.
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
from dataclasses import asdict, dataclass
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter has no compiler to ask
    sys.exit("compile_report.py compiles real kernels: unset TRITON_INTERPRET")
os.environ.setdefault("TAP_FAST_AUTOTUNE", "1")  # report the GPU's autotune candidates

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from tap_fast.kernels import tap_triton  # noqa: E402  (the module the benchmarks call)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_utils import env_vars, git_commit, positive_int, prepare_out, run_cli  # noqa: E402

PAPER_WIDTHS = dict(H1=1024, H2=256, H3=64)
KERNELS = ("fwd", "bwd")
# Largest shared memory one block may use (opt-in), by compute capability.
SMEM_LIMIT = {90: 232448, 89: 101376, 86: 101376, 80: 166912}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
UV_LOADS = ("broadcast", "rows")  # TAP_FAST_UV_LOAD's values (kernels/tap_triton.py)
MIN_TILE_ROWS = 16  # compiled, tl.dot needs 16 rows at least (TAP_FAST_TILE_ROWS: a power of two >= 16)


@dataclass
class KernelReport:
    kernel: str
    variant: str
    tq: int
    bi: int
    bj: int
    bk: int
    num_warps: int
    num_stages: int
    bkb: int | None = None  # the backward's phase-B K-block (None: the forward)
    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    spills_in_inner_loops: int = 0  # LDL/STL instructions inside innermost loops: the costly ones
    k_loop_instructions: int = 0  # per thread and iteration of the main K-loop
    shared_bytes: int = 0
    over_smem_limit: bool = False
    wgmma: int = 0
    mma_sync: int = 0


class _StandInDriver:
    """Just enough of Triton's CUDA driver for the JIT to compile (never launch) for a chosen target."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


def variant_name(text: str) -> str:
    """An argparse type for a variant, "ROWS/UV_LOAD", checked before anything compiles: ROWS a power
    of two >= 16 (TAP_FAST_TILE_ROWS), UV_LOAD broadcast or rows (TAP_FAST_UV_LOAD)."""
    rows, sep, uv_load = text.partition("/")
    if not (sep and rows.isdigit() and int(rows) >= MIN_TILE_ROWS and int(rows) & (int(rows) - 1) == 0
            and uv_load in UV_LOADS):
        raise argparse.ArgumentTypeError(
            f"expected ROWS/UV_LOAD, ROWS a power of two >= {MIN_TILE_ROWS} and UV_LOAD one of "
            f"{', '.join(UV_LOADS)} (e.g. 64/broadcast), got {text!r}")
    return text


def backward_kind() -> str:
    """Which backward the report compiles: TAP_FAST_DETERMINISTIC chooses it, as for tap_scores."""
    from tap_fast.kernels.tap import resolve_deterministic

    return "deterministic (two passes)" if resolve_deterministic() else "atomic (TAP_FAST_DETERMINISTIC=0, one pass)"


def variant_env(variant: str):
    """TAP_FAST_TILE_ROWS / TAP_FAST_UV_LOAD set from "ROWS/UV_LOAD" for the duration."""
    rows, uv_load = variant.split("/")
    return env_vars(TAP_FAST_TILE_ROWS=rows, TAP_FAST_UV_LOAD=uv_load)


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


def inner_loops(cubin: bytes) -> tuple[int, int]:
    """(LDL/STL instructions inside innermost loops, instructions per iteration of the main K-loop)
    from the SASS.  Spills outside innermost loops (loop-invariant values parked once and reloaded per
    tile) cost little next to a tile's GEMMs; inside a K-loop they cost on every step.  The main
    K-loop is the loop with the most warpgroup MMAs among those with no MMA loop inside; its length per thread against the
    MMAs' tensor-core cycles says whether issuing the A operand's arithmetic can keep up.  A loop
    is a backward branch to a label."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        sass = subprocess.run([_tool("nvdisasm"), "-c", str(path)], capture_output=True, text=True, check=True).stdout
    lines = sass.splitlines()
    labels = {m.group(1): n for n, line in enumerate(lines) if (m := re.match(r"\s*\.(L_x_\d+):", line))}
    loops = [(labels[m.group(1)], n) for n, line in enumerate(lines)
             if (m := re.search(r"\bBRA\b.*\.(L_x_\d+)", line)) and labels.get(m.group(1), n) < n]
    innermost = [(a, b) for a, b in loops if not any(a < c and d < b for c, d in loops)]
    spills = sum(1 for a, b in innermost for line in lines[a:b + 1] if re.search(r"\b(LDL|STL)\b", line))
    mma = {(a, b): sum("HGMMA" in line for line in lines[a:b + 1]) for a, b in loops}
    # Loops with MMAs and no inner loop that has MMAs of its own (a K-loop may hold small loops).
    k_loops = [(a, b) for (a, b), n in mma.items() if n and not any(a < c and d < b and mma[(c, d)] for c, d in loops)]
    if not k_loops:
        return spills, 0
    a, b = max(k_loops, key=mma.get)
    return spills, sum(1 for line in lines[a:b + 1] if re.search(r"/\*[0-9a-f]{4,}\*/", line))


def analyse(label: str, variant: str, tq: int, config, kwargs: dict, kernel, arch: int) -> KernelReport:
    """Registers, spills, shared memory and MMA kind of one compiled kernel."""
    report = KernelReport(kernel=label, variant=variant, tq=tq, bi=kwargs["BI"], bj=kwargs["BJ"], bk=config.kwargs["BK"],
                          bkb=config.kwargs.get("BKB"),
                          num_warps=config.num_warps, num_stages=config.num_stages)
    ptx = kernel.asm["ptx"]
    report.registers, report.spill_stores, report.spill_loads = _ptxas_usage(ptx, arch)
    report.spills_in_inner_loops, report.k_loop_instructions = inner_loops(kernel.asm["cubin"])
    report.shared_bytes = int(kernel.metadata.shared)
    report.over_smem_limit = report.shared_bytes > SMEM_LIMIT.get(arch, 1 << 30)
    report.wgmma = len(re.findall(r"wgmma\.mma_async", ptx))
    report.mma_sync = len(re.findall(r"\bmma\.sync", ptx))
    return report


def to_markdown(reports: list[KernelReport], header: str) -> str:
    lines = [header, "",
             "| kernel | variant | T | tile BI x BJ | BK (phase B) | warps | stages | regs | spills st/ld (B) | spill instr. "
             "in inner loops | K-loop instr. | smem (KiB) | wgmma | mma.sync |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        smem = f"{r.shared_bytes / 1024:.0f}" + (" **over the limit**" if r.over_smem_limit else "")
        lines.append(f"| {r.kernel} | {r.variant} | {r.tq} | {r.bi}x{r.bj} | {r.bk}{'' if r.bkb is None else f' ({r.bkb})'} | {r.num_warps} | {r.num_stages} | "
                     f"{r.registers} | {r.spill_stores}/{r.spill_loads} | {r.spills_in_inner_loops} | {r.k_loop_instructions} | {smem} | "
                     f"{r.wgmma} | {r.mma_sync} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    # the whole docstring (raw: its example keeps its line continuation): its first line stops mid-sentence
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=positive_int, default=90, help="compute capability: 90 (H100/H200), 80 (A100)")
    parser.add_argument("--tq", type=positive_int, nargs="+", default=[32, 64], help="clip lengths (tile shapes follow them)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="operand dtype (default bf16)")
    parser.add_argument("--kernels", nargs="+", choices=KERNELS, default=list(KERNELS),
                        help="which fused kernels to compile (default all)")
    parser.add_argument("--variants", nargs="+", type=variant_name, default=["64/broadcast"],
                        help="TILE_ROWS/UV_LOAD pairs, e.g. 64/broadcast 128/rows")
    parser.add_argument("--out", help="also write <out>.md and <out>.json")
    args = parser.parse_args(argv)
    out = prepare_out(args.out, (".md", ".json")) if args.out else None  # before compiling, not after
    commit = git_commit()

    triton.runtime.driver.set_active(_StandInDriver(args.arch))
    reports, failures = [], []
    for n, (variant, tq) in enumerate(((v, t) for v in args.variants for t in args.tq), start=1):
        print(f"[{n}/{len(args.variants) * len(args.tq)}] {variant} T={tq}", file=sys.stderr, flush=True)
        try:  # 5-way 5-shot: the launch arguments of a real episode
            with variant_env(variant):
                compiled = tap_triton.precompile(5, 25, tq, tq, tuple(PAPER_WIDTHS.values()), DTYPES[args.dtype],
                                                 device="cpu")
        except Exception as exc:  # a compile failure is a result to report, not a crash of the report
            failures.append(f"{variant} T={tq}: {type(exc).__name__}: {str(exc).strip()[:2000]}")
            continue
        reports += [analyse(label, variant, tq, config, kwargs, kernel, args.arch)
                    for label, config, kwargs, kernel in compiled if label in args.kernels]
    header = (f"# Fused TAP kernels compiled for sm_{args.arch} without a GPU: Triton {triton.__version__}, {args.dtype}, "
              f"H1-H2-H3 = {PAPER_WIDTHS['H1']}-{PAPER_WIDTHS['H2']}-{PAPER_WIDTHS['H3']}, 5-way 5-shot launch "
              f"arguments; {_dt.date.today()}, commit {commit}; backward: {backward_kind()}")
    text = to_markdown(reports, header) + "".join(f"\n**Failed to compile:** {f}\n" for f in failures)
    print(text)
    if out:
        out.with_suffix(".md").write_text(text)
        out.with_suffix(".json").write_text(json.dumps(dict(
            triton=triton.__version__, arch=args.arch, dtype=args.dtype, widths=PAPER_WIDTHS,
            date=str(_dt.date.today()), commit=commit,
            reports=[asdict(r) for r in reports], failures=failures), indent=1))
    # non-zero after writing what did compile: a requested variant failed, or a kernel outgrew shared memory
    if failures:
        print(f"compile_report: {len(failures)} of {len(args.variants) * len(args.tq)} variant/T pairs failed to "
              "compile (listed above)", file=sys.stderr)
    return 1 if failures or any(r.over_smem_limit for r in reports) else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
