"""Only this: without CUDA, run Triton kernels in the interpreter (must be set before triton is imported)."""
import os

if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
