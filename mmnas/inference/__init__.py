"""Running a trained model for answers: the dygraph model or its Paddle Inference export
(oneDNN, fp32 or bf16 on CPU), behind one callable (predictor.build_predictor), and the ONNX
export (onnx_export)."""
from .predictor import ENGINES, PRECISIONS, InferenceError, build_predictor, cpu_info, resolve_engine

__all__ = ["ENGINES", "PRECISIONS", "InferenceError", "build_predictor", "cpu_info", "resolve_engine"]
