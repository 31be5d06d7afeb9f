"""Build and install tap_fast.

* ``tap_fast``          the application (``tap_fast/``)
* ``tap_fast.kernels``  reusable ops (``kernels/``), importable on their own
* ``tap_fast._C``       the soft-DTW extension compiled from ``csrc/``

Install with ``pip install --no-build-isolation -e .`` after installing torch
(the extension compiles against the torch already in the environment).
"""
from setuptools import setup


def extension_build():
    """(ext_modules, cmdclass) for tap_fast._C; filled in by the soft-DTW extension work."""
    return [], {}


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
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
