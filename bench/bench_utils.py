"""Timing, memory and device helpers shared by every benchmark suite (TAP and soft-DTW)."""
from __future__ import annotations

import os
import platform
import subprocess
import time
from contextlib import contextmanager
from typing import Callable

import torch

__all__ = ["env_vars", "time_cuda", "time_cuda_adaptive", "time_cpu", "time_fn", "peak_memory_bytes", "device_info", "matmul_tflops", "git_commit"]


@contextmanager
def env_vars(**values: str):
    """Set environment variables for the duration (the kernels' knobs are read per call), then restore."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def time_cuda(fn: Callable[[], object], warmup: int = 3, iters: int = 10) -> float:
    """Mean milliseconds per call measured with CUDA events after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def time_cuda_adaptive(fn: Callable[[], object], budget_ms: float = 1500.0, max_iters: int = 20) -> tuple[float, int]:
    """(mean ms per call, iterations): one warm-up call (compilation, autotuning), one timed probe,
    then as many timed calls as fit in ``budget_ms`` (3 to ``max_iters``), so that slow rows of a
    sweep do not eat a short GPU lease while fast rows still average over many calls."""
    fn()
    probe = time_cuda(fn, warmup=0, iters=1)
    iters = int(max(3, min(max_iters, budget_ms // max(probe, 1e-3))))
    return time_cuda(fn, warmup=1, iters=iters), iters


def time_cpu(fn: Callable[[], object], warmup: int = 1, iters: int = 3) -> float:
    """Mean milliseconds per call with perf_counter (CPU work is synchronous)."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) * 1e3 / iters


def time_fn(fn: Callable[[], object], device: torch.device | str, warmup: int = 3, iters: int = 10) -> float:
    """time_cuda on CUDA, time_cpu elsewhere."""
    if torch.device(device).type == "cuda":
        return time_cuda(fn, warmup, iters)
    return time_cpu(fn, min(warmup, 1), max(1, min(iters, 3)))


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str) -> int | None:
    """Peak CUDA memory allocated above the current level during one call (None on CPU: not tracked)."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def matmul_tflops(device: torch.device | str, n: int | None = None, dtype: torch.dtype | None = None) -> float:
    """Measured dense-matmul rate (TFLOP/s): bf16 n=8192 on CUDA, fp32 n=1024 on CPU."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = n or (8192 if cuda else 1024)
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    ms = time_fn(lambda: a @ b, device, warmup=3, iters=10)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def git_commit() -> str:
    """The checkout's short commit; TAP_FAST_COMMIT where the tree travels without .git (device runs)."""
    if os.environ.get("TAP_FAST_COMMIT"):
        return os.environ["TAP_FAST_COMMIT"]
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_info(device: torch.device | str | None = None) -> dict:
    """Where the numbers come from: device name, torch/triton/CUDA versions, CPU, threads, commit."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = {
        "device": device.type,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "commit": git_commit(),
        # the fused kernels' knobs in force (tile heights, U/V read, backward split): part of the result
        "knobs": {k: v for k, v in sorted(os.environ.items()) if k.startswith("TAP_FAST_") and k != "TAP_FAST_COMMIT"},
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, cuda=torch.version.cuda, sm_count=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1))
    else:
        info["name"] = f"CPU ({info['cpu']}, {info['threads']} threads)"
    return info
