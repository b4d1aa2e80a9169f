"""Shipping policies: :mod:`~servegym.deploy.export` writes bundles, :mod:`~servegym.deploy.runtime` runs them.

``export`` needs the training stack (torch, stable-baselines3, scikit-learn, skl2onnx);
``runtime`` needs only numpy and is copied into every bundle, so importing this package
imports neither: import the module you need.
"""

__all__ = ["export", "mlflow_model", "runtime"]
