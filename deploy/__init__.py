"""Deployment: ONNX export (``deploy.export``, needs torch) and torch-free onnxruntime predictors.

``import deploy`` imports no torch: ``deploy.load(folder)`` returns the predictor of an exported folder.
"""

from deploy.runtime import load

__all__ = ["load"]
