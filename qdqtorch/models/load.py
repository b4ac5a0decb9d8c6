"""load_model: one entry point from a checkpoint path, model yaml or nn.Module to a float32 eval-mode detector."""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch
import yaml
from torch import nn

from .describe import class_names, find_head, float_by_default, max_stride
from .errors import ModelLoadError, ModelNotFoundError
from .fold import fold_batchnorm
from .loaded import LoadedModel
from .reparam import fuse_reparameterizable
from .repo_pickle import load_repo_pickle
from .safetensors_loader import load_detector, read_metadata, recorded_imgsz
from .ultralytics_loader import load_ultralytics

_YAML = {".yaml", ".yml"}
# names Ultralytics would fetch from its release assets when missing
_ULTRALYTICS_ASSET = re.compile(r"^(yolo|yolov\d+|rtdetr|yoloe)[\w.-]*\.pt$", re.IGNORECASE)
_WHAT_TO_PASS = ("pass the path of a .pt checkpoint (a training-repository whole-model pickle or an Ultralytics "
                 "checkpoint), a detector saved by qdqtorch as .safetensors, or an Ultralytics model yaml such as "
                 "yolov8n.yaml")


def _is_torch_file(path: Path) -> bool:
    """torch.save output: a zip with a data.pkl record, or the legacy raw-pickle format."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("data.pkl") for n in archive.namelist())
    with open(path, "rb") as f:
        return f.read(2) in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _references_ultralytics(path: Path) -> bool:
    """Does the pickle name `ultralytics.*` classes? Read from the pickle's opcodes, without running it."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy format or older torch: tell by trying the repository route
        return False
    return any(n.split(".")[0] == "ultralytics" for n in names)


def _missing(spec: str, path: Path) -> ModelNotFoundError:
    if path.parent == Path(".") and _ULTRALYTICS_ASSET.match(path.name):
        return ModelNotFoundError(f"{spec} is not on disk (looked for {path.resolve()}); Ultralytics would download "
                                  "it, but qdqtorch never downloads and this machine may be offline: pass a local "
                                  "path to the checkpoint")
    return ModelNotFoundError(f"model not found: {spec} (resolved to {path.resolve()}); {_WHAT_TO_PASS}")


def _check_model_yaml(spec: str | Path, path: Path) -> None:
    """Refuse a yaml that is not a model config (most often the dataset yaml passed as the model) before Ultralytics
    fails on it with a bare KeyError."""
    try:
        config = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"model yaml {spec}: not readable as YAML ({exc}); {_WHAT_TO_PASS}") from exc
    if isinstance(config, dict) and "backbone" in config and "head" in config:
        return
    looks_like_data = isinstance(config, dict) and ("names" in config or "val" in config or "train" in config)
    hint = (": it looks like a dataset yaml (it lists images or class names), which goes in --data / data="
            if looks_like_data else "")
    raise ModelLoadError(f"model yaml {spec}: not a model config (no 'backbone' and 'head' sections){hint}; "
                         f"{_WHAT_TO_PASS}")


def _load_module(spec: str | Path | nn.Module, repo: str | Path | None) -> tuple[nn.Module, str, int | None]:
    """Return (module, source description, training image size recorded in the file or None)."""
    if isinstance(spec, nn.Module):
        return spec, f"module:{type(spec).__name__}", None
    path = Path(spec).expanduser()
    if path.suffix.lower() in _YAML:
        if not path.exists() and path.parent != Path("."):
            raise _missing(str(spec), path)
        if path.exists():
            _check_model_yaml(spec, path)
        name = str(path) if path.exists() else path.name  # bare names resolve to ultralytics' bundled cfgs
        model, note = load_ultralytics(name, f"model yaml {spec}")
        return model, f"ultralytics-yaml:{name} (random init){note}", None
    if not path.exists():
        raise _missing(str(spec), path)
    if path.is_dir():
        raise ModelLoadError(f"{spec} is a folder; {_WHAT_TO_PASS} (a training repository goes in --repo)")
    if path.suffix.lower() == ".safetensors":
        metadata = read_metadata(path)
        if metadata is None:
            raise ModelLoadError(f"{spec}: not a readable safetensors file (truncated or another format); "
                                 f"{_WHAT_TO_PASS}")
        return load_detector(path, metadata), f"safetensors:{path.resolve()}", recorded_imgsz(metadata)
    if not _is_torch_file(path):
        raise ModelLoadError(f"{spec}: unknown file type (not a torch.save checkpoint nor a .yaml model config); "
                             f"{_WHAT_TO_PASS}. ONNX/TensorRT files hold no PyTorch model to quantize")
    if _references_ultralytics(path):
        model, note = load_ultralytics(str(path), f"checkpoint {spec}")
        return model, f"ultralytics:{path.resolve()}{note}", _ultralytics_imgsz(model)
    model, packaged = load_repo_pickle(path, repo)
    where = f" (repo {Path(repo).resolve()})" if repo is not None else " (pip package yolov5)" if packaged else ""
    return model, f"repo-pickle:{path.resolve()}{where}", None


def load_model(spec: str | Path | nn.Module, *, repo: str | Path | None = None, device: str | torch.device = "cpu",
               fuse_bn: bool = False, fuse_reparam: bool = True) -> LoadedModel:
    """Load a detector as float32, eval mode, frozen, with its output layout, class names and stride.

    `spec` is a checkpoint path (a training-repository whole-model pickle such as YOLOv5/YOLOv7 `best.pt`, with
    `repo` the repository it was saved from; or an Ultralytics `.pt`, detected by content), an Ultralytics model yaml
    (`yolov8n.yaml`: random init, bundled configs resolved by the ultralytics package), a `.safetensors` detector
    written by `qdqtorch.models.save_detector` (weights + architecture, no pickle), or an nn.Module.
    Checkpoints are pickles: loading one runs code from it (and from `repo`), so load only files you trust.
    Nothing is downloaded. `fuse_bn` folds BatchNorm into the preceding convs (see `fold_batchnorm`).
    `fuse_reparam` (default) fuses re-parameterisable blocks (RepConv) into the single conv TensorRT deploys (see
    `fuse_reparameterizable`); pass False to keep their training form, e.g. for QAT.
    """
    module, source, imgsz = _load_module(spec, repo)
    model = module.float().to(device).eval()
    model.requires_grad_(False)
    layout, head = find_head(model)
    if fuse_reparam:
        fused = fuse_reparameterizable(model)
        if fused:
            source += f" (re-parameterised blocks fused: {len(fused)})"
    if fuse_bn:
        source += f" (batchnorm folded: {fold_batchnorm(model)})"
    return LoadedModel(model=model, layout=layout, names=class_names(model, head), stride=max_stride(model, head),
                       default_ignore=float_by_default(model), source=source, imgsz=imgsz,
                       trained=isinstance(spec, nn.Module) or Path(spec).suffix.lower() not in _YAML)


def _ultralytics_imgsz(module: nn.Module) -> int | None:
    """The image size an Ultralytics checkpoint was trained at (its model's training args), or None."""
    args = getattr(module, "args", None)
    imgsz = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
    return imgsz if isinstance(imgsz, int) and not isinstance(imgsz, bool) and imgsz > 0 else None
