"""Using a trained network: an inference bundle (network, class names, preprocessing) read from a checkpoint
or an export, BatchNorm folding, export to safetensors/pt2/ONNX/TorchScript, the runtimes that run it (torch,
onnxruntime), torchvision's and akamaster's published weights, prediction on image files."""

from .akamaster import AKAMASTER_MODELS, akamaster_checkpoint, import_akamaster, read_akamaster
from .bundle import InferenceBundle, is_safetensors, load_bundle, read_bundle
from .export import (
    FORMATS,
    TOLERANCE,
    ExportReport,
    export_bundle,
    export_command,
    export_model,
    outputs_match,
    write_onnx,
)
from .fold import conv_bn_pairs, fold_batchnorm, prepare_inference, structure_for_folded
from .imported import IMPORT_SOURCES, import_command
from .predict import Prediction, predict_command, predict_images
from .runtimes import RUNTIMES, OnnxRuntimeNetwork, cached_onnx, choose_runtime, load_inference, onnx_cache_path
from .scoring import class_log_probs
from .torchvision_weights import (
    TORCHVISION_MODELS,
    imagenet_classes,
    import_torchvision,
    read_torchvision,
    torchvision_checkpoint,
)

__all__ = [
    "AKAMASTER_MODELS",
    "FORMATS",
    "IMPORT_SOURCES",
    "ExportReport",
    "InferenceBundle",
    "OnnxRuntimeNetwork",
    "Prediction",
    "RUNTIMES",
    "TOLERANCE",
    "TORCHVISION_MODELS",
    "akamaster_checkpoint",
    "cached_onnx",
    "choose_runtime",
    "class_log_probs",
    "conv_bn_pairs",
    "export_bundle",
    "export_command",
    "export_model",
    "fold_batchnorm",
    "imagenet_classes",
    "import_akamaster",
    "import_command",
    "import_torchvision",
    "is_safetensors",
    "load_bundle",
    "load_inference",
    "onnx_cache_path",
    "outputs_match",
    "read_akamaster",
    "predict_command",
    "predict_images",
    "prepare_inference",
    "read_bundle",
    "read_torchvision",
    "structure_for_folded",
    "torchvision_checkpoint",
    "write_onnx",
]
