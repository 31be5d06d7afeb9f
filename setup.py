"""Build and install tap_fast.

* ``tap_fast``          the application (``tap_fast/``)
* ``tap_fast.kernels``  reusable ops (``kernels/``), importable on their own
* ``tap_fast._C``       the soft-DTW extension compiled from ``csrc/``

Install with ``pip install --no-build-isolation -e .`` after installing torch
(the extension compiles against the torch already in the environment).
"""
import os
import re
import shutil
import subprocess
import tempfile

from setuptools import setup


def _find_cuda_home():
    """CUDA toolkit root, or None.

    torch's own guess is dirname(dirname(which nvcc)), wrong when nvcc is a wrapper
    script or symlink outside the toolkit (here /usr/local/bin/nvcc). Order: CUDA_HOME
    or CUDA_PATH, /usr/local/cuda, then the root nvcc itself reports (TOP= in --dryrun).
    """
    def is_root(path):
        return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isdir(
            os.path.join(path, "include"))

    for path in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if is_root(path):
            return os.path.realpath(path)
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    guess = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    if is_root(guess):
        return guess
    try:
        with tempfile.TemporaryDirectory() as tmp:
            probe = os.path.join(tmp, "probe.cu")
            open(probe, "w").close()
            out = subprocess.run([nvcc, "--dryrun", "-c", probe, "-o", os.path.join(tmp, "p.o")],
                                 capture_output=True, text=True, timeout=60)
        for line in (out.stdout + out.stderr).splitlines():
            match = re.match(r"#\$ TOP=(.*)$", line.strip())
            if match and is_root(os.path.normpath(match.group(1))):
                return os.path.normpath(match.group(1))
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def extension_build():
    """(ext_modules, cmdclass) for the soft-DTW extension tap_fast._C (csrc/).

    TAP_FAST_BUILD_EXT = auto (default) | cpu | cuda:
      auto  CUDA kernels too when torch was built with CUDA and nvcc is found
      cpu   C++ kernels only
      cuda  require the CUDA kernels (error if torch lacks CUDA or nvcc is missing)
    Build speed defaults (override by setting them): MAX_JOBS=2, and
    TORCH_CUDA_ARCH_LIST="9.0" (H100/H200; e.g. "8.0;9.0" for A100 too).
    """
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as err:  # the usual cause: pip's build isolation hides the installed torch
        raise SystemExit(
            f"tap_fast's extension compiles against an installed torch, but it cannot be imported ({err}). "
            "Install torch first, then this package with --no-build-isolation, e.g.\n"
            "  pip install torch==2.14.1 torchvision==0.29.1\n"
            "  pip install --no-build-isolation -e \".[test]\"") from None

    mode = os.environ.get("TAP_FAST_BUILD_EXT", "auto").strip().lower()
    if mode not in ("auto", "cpu", "cuda"):
        raise SystemExit(f"TAP_FAST_BUILD_EXT must be auto, cpu or cuda, got {mode!r}")
    cuda_home = _find_cuda_home() if mode != "cpu" else None
    use_cuda = mode == "cuda" or (mode == "auto" and torch.version.cuda is not None
                                  and cuda_home is not None)
    if use_cuda and (torch.version.cuda is None or cuda_home is None):
        raise SystemExit(
            "TAP_FAST_BUILD_EXT=cuda but "
            + ("this torch has no CUDA" if torch.version.cuda is None
               else "no CUDA toolkit found (set CUDA_HOME to the directory holding bin/nvcc)"))
    os.environ.setdefault("MAX_JOBS", "2")

    root = os.path.dirname(os.path.abspath(__file__))
    sources = [os.path.join("csrc", "soft_dtw.cpp"), os.path.join("csrc", "cpu", "soft_dtw_kernel.cpp")]
    # -fopenmp-simd: vectorise the lane loops (#pragma omp simd) without an OpenMP runtime
    # (at::parallel_for would then run serially); the CPU kernel splits its tiles itself over
    # torch's inter-op pool, up to torch.get_num_threads() threads (parallel_tiles).
    cxx_flags = ["-O3", "-fopenmp-simd"]
    kwargs = dict(include_dirs=[os.path.join(root, "csrc")])
    if use_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home  # torch read its (possibly wrong) guess at import
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        sources.append(os.path.join("csrc", "cuda", "soft_dtw_kernel.cu"))
        ext = cpp_extension.CUDAExtension(
            "tap_fast._C", sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            **kwargs)
    else:
        ext = cpp_extension.CppExtension("tap_fast._C", sources,
                                         extra_compile_args={"cxx": cxx_flags}, **kwargs)
    print(f"tap_fast._C: building {'C++ + CUDA (CUDA_HOME=' + cuda_home + ')' if use_cuda else 'C++ only'}")
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_build()

setup(
    name="tap_fast",
    version="0.1.0",
    description="Few-shot video classification by Temporal Alignment Prediction, with fused kernels",
    python_requires=">=3.10",
    packages=[
        "tap_fast",
        "tap_fast.data",
        "tap_fast.models",
        "tap_fast.kernels",
    ],
    package_dir={"tap_fast.kernels": "kernels"},
    install_requires=[
        "torch>=2.9",
        "torchvision>=0.24",
        "numpy",
        "av>=12",
        "tqdm",
        "matplotlib",
        "tensorboard",
    ],
    extras_require={
        # DALI: GPU (and VP9/MJPEG CPU) decoding; the tests compare its CPU pipeline with PyAV
        "dali": ["nvidia-dali-cuda130"],
        "test": ["pytest", "pytest-benchmark", "nvidia-dali-cuda130"],
        # pysdtw: the soft-DTW baseline our extension is benchmarked against
        "bench": ["pytest-benchmark", "pysdtw"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
