"""Installable package `mmnas`: MMNasNet for VQA-v2 in PaddlePaddle."""
from setuptools import find_packages, setup

setup(
    name="mmnas-paddle",
    version="0.1.0",
    description="MMNasNet (Deep Multimodal Neural Architecture Search) for VQA-v2 in PaddlePaddle",
    packages=find_packages(include=["mmnas", "mmnas.*"]),
    package_data={"mmnas.metrics": ["*.json"]},
    python_requires=">=3.8",
    install_requires=["numpy>=1.25", "pyyaml>=6.0", "tqdm>=4.60"],
    extras_require={
        # paddle itself is left to the user: `paddlepaddle` on CPU, `paddlepaddle-gpu` on GPU.
        "cpu": ["paddlepaddle>=3.0"],
        "vdl": ["visualdl>=2.5"],
        "convert": ["torch"],
        "onnx": ["paddle2onnx>=2.0", "onnxruntime>=1.17"],  # ONNX export (mmnas/inference/onnx_export.py)
        "test": ["pytest>=7", "matplotlib>=3.6", "paddle2onnx>=2.0", "onnxruntime>=1.17"],
    },
    entry_points={"console_scripts": ["mmnas=mmnas.cli:main"]},
)
