"""Session fixtures shared by the benchmark suites: the device, its description and its measured
dense-matmul rate (the roofline the kernels' achieved TFLOP/s are compared against)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_utils importable from every suite

from bench_utils import device_info, matmul_tflops  # noqa: E402


@pytest.fixture(scope="session")
def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def bench_device_info(bench_device) -> dict:
    return device_info(bench_device)


@pytest.fixture(scope="session")
def dense_tflops(bench_device) -> float:
    """Measured dense matmul TFLOP/s: bf16 8192^3 on CUDA, fp32 1024^3 on CPU."""
    return matmul_tflops(bench_device)
