"""Model loading: checkpoints (training-repository pickles, Ultralytics) to float32 detectors with output metadata."""
from .export_metadata import ultralytics_metadata
from .errors import ModelLoadError, ModelNotFoundError
from .fold import fold_batchnorm
from .load import load_model
from .loaded import LoadedModel
from .reparam import fuse_reparameterizable
from .safetensors_loader import save_detector
from .outputs import LAYOUTS, ULTRALYTICS, YOLOV5, PredictionOnly, prediction_tensor, select_predictions

__all__ = ["LAYOUTS", "ULTRALYTICS", "YOLOV5", "LoadedModel", "ModelLoadError", "ModelNotFoundError",
           "PredictionOnly", "fold_batchnorm", "fuse_reparameterizable", "load_model", "prediction_tensor",
           "save_detector", "select_predictions", "ultralytics_metadata"]
