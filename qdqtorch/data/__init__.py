"""Calibration data: sources (folders, list files, dataset yamls, tensor files), preprocessing and loaders."""
from .dataset import CalibrationDataset, MultiInputDataset
from .hooks import load_hook
from .image_io import IMAGE_EXTENSIONS, BadImageError, read_image
from .loader import CalibrationLoader, calibration_loader
from .preprocess import Preprocess, PreprocessError, load_preprocess, save_preprocess
from .sources import (EmptySourceError, dataset_names, dataset_root, dataset_split, list_folder, read_list_file,
                      resolve_source)
from .tensor_io import TensorFileError
from .transforms import TransformInfo, apply_geometry, letterbox, normalize, plain_resize, preprocess_image

__all__ = [
    "BadImageError", "CalibrationDataset", "CalibrationLoader", "EmptySourceError", "IMAGE_EXTENSIONS",
    "MultiInputDataset", "Preprocess", "PreprocessError", "TensorFileError", "TransformInfo", "apply_geometry",
    "calibration_loader", "dataset_names", "dataset_root", "dataset_split", "letterbox", "list_folder", "load_hook",
    "load_preprocess", "normalize", "plain_resize", "preprocess_image", "read_image", "read_list_file",
    "resolve_source", "save_preprocess",
]
