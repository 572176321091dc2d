"""resnetlab: He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), complete and exact."""

from .models import create_model, list_models, model_info

__version__ = "0.1.0"  # the one place: pyproject.toml reads it ([tool.setuptools.dynamic])
__all__ = ["create_model", "list_models", "model_info", "__version__"]
