"""Using a trained network: an inference bundle (network, class names, preprocessing) read from a checkpoint
or an export, BatchNorm folding, export to safetensors/TorchScript/ONNX, torchvision's published weights,
prediction on image files."""

from .bundle import InferenceBundle, is_safetensors, load_bundle, read_bundle
from .export import FORMATS, TOLERANCE, ExportReport, export_command, export_model, outputs_match
from .fold import conv_bn_pairs, fold_batchnorm, prepare_inference, structure_for_folded
from .predict import Prediction, predict_command, predict_images
from .scoring import class_log_probs
from .torchvision_weights import TORCHVISION_MODELS, imagenet_classes, import_command, import_torchvision

__all__ = [
    "FORMATS",
    "ExportReport",
    "InferenceBundle",
    "Prediction",
    "TOLERANCE",
    "TORCHVISION_MODELS",
    "class_log_probs",
    "conv_bn_pairs",
    "export_command",
    "export_model",
    "fold_batchnorm",
    "imagenet_classes",
    "import_command",
    "import_torchvision",
    "is_safetensors",
    "load_bundle",
    "outputs_match",
    "predict_command",
    "predict_images",
    "prepare_inference",
    "read_bundle",
    "structure_for_folded",
]
