"""Installable package `mmnas`: MMNasNet for VQA, visual grounding and image-text matching in PaddlePaddle."""
from setuptools import find_packages, setup

setup(
    name="mmnas-paddle",
    version="0.1.0",
    description="MMNasNet (Deep Multimodal Neural Architecture Search) for VQA, visual grounding and image-text matching in PaddlePaddle",
    packages=find_packages(include=["mmnas", "mmnas.*"]),
    package_data={"mmnas.metrics": ["*.json"]},
    python_requires=">=3.8",
    install_requires=["numpy>=1.25", "pyyaml>=6.0", "tqdm>=4.60"],
    extras_require={
        # paddle itself is left to the user: `paddlepaddle` on CPU, `paddlepaddle-gpu` on GPU.
        "cpu": ["paddlepaddle>=3.0"],
        "vdl": ["visualdl>=2.5"],
        "convert": ["torch"],
        # the web demo (tools/demo_web.py); tested with gradio 6.31, which needs Python >= 3.10
        "demo": ["gradio>=6; python_version >= '3.10'"],
        "onnx": ["paddle2onnx>=2.0", "onnxruntime>=1.17"],  # ONNX export (mmnas/inference/onnx_export.py)
        # torch for the conversion tests and the PyTorch rows of bench/eval.py; 2.13.0 is the CPU
        # build this project's machines carry (an unpinned torch from PyPI is a CUDA build of several GB)
        "test": ["pytest>=7", "pytest-timeout>=2.1", "matplotlib>=3.6", "torch==2.13.0",
                 "gradio>=6; python_version >= '3.10'", "paddle2onnx>=2.0", "onnxruntime>=1.17"],
    },
    entry_points={"console_scripts": ["mmnas=mmnas.cli:main"]},
)
