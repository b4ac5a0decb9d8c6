"""qdqtorch.models: the real YOLOv5n pickle through the fixture repository, Ultralytics models, BN folding, errors."""
from __future__ import annotations

import copy
import importlib
import importlib.util
import re
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from conftest import YOLOV5_REPO_FIXTURE
from qdqtorch.models import (ModelLoadError, ModelNotFoundError, PredictionOnly, fold_batchnorm, load_model,
                             select_predictions)
from qdqtorch.models.repo_pickle import repository_on_path

TINY_CFG = {  # a 2-level YOLOv5-style model, small enough to build and save in a test
    "nc": 2, "depth_multiple": 0.33, "width_multiple": 0.25,
    "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]],
    "backbone": [[-1, 1, "Conv", [64, 3, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 3, "C3", [128]],
                 [-1, 1, "Conv", [256, 3, 2]], [-1, 1, "SPPF", [256, 5]]],
    "head": [[-1, 1, "nn.Upsample", ["None", 2, "nearest"]], [[-1, 2], 1, "Concat", [1]],
             [-1, 1, "C3", [128, False]], [[7, 4], 1, "Detect", ["nc", "anchors"]]],
}


def _forget_repo_modules(monkeypatch: pytest.MonkeyPatch, also: tuple[str, ...] = ()) -> None:
    """Make `models`/`utils` unimportable for one test, as in a fresh process outside any training repository."""
    for key in list(sys.modules):
        if key.split(".")[0] in ("models", "utils", *also):
            monkeypatch.delitem(sys.modules, key)


def _defined_in(model: nn.Module) -> Path:
    """The file that defines the model's class (robust to later changes of sys.modules)."""
    return Path(type(model).forward.__code__.co_filename).resolve()


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.fixture(scope="module")
def yolov5n(yolov5n_path):
    return load_model(yolov5n_path, repo=YOLOV5_REPO_FIXTURE)


@pytest.fixture()
def tiny_checkpoint(tmp_path) -> tuple[Path, Path]:
    """A copy of the fixture repository and a whole-model pickle saved from it: (repo, checkpoint)."""
    repo = tmp_path / "other_repo"
    shutil.copytree(YOLOV5_REPO_FIXTURE, repo, ignore=shutil.ignore_patterns("__pycache__"))
    with repository_on_path(repo):
        model = importlib.import_module("models.yolo").Model(TINY_CFG).eval()
        path = tmp_path / "tiny.pt"
        torch.save({"model": model.half(), "ema": None, "epoch": 3}, path)
    return repo, path


# --- the real YOLOv5n checkpoint through the fixture repository -------------------------------------------------


def test_yolov5n_loads_float32_eval_frozen(yolov5n, yolov5n_path):
    model = yolov5n.model
    assert yolov5n.layout == "yolov5"
    assert yolov5n.stride == 32
    assert len(yolov5n.names) == 80 and yolov5n.names[0] == "person" and yolov5n.num_classes == 80
    assert yolov5n.default_ignore == []
    assert str(yolov5n_path.resolve()) in yolov5n.source
    assert not model.training and all(not m.training for m in model.modules())
    tensors = list(model.parameters()) + list(model.buffers())
    assert all(t.dtype == torch.float32 for t in tensors if t.is_floating_point())
    assert not any(p.requires_grad for p in model.parameters())
    # the classes came from the fixture repository, which is no longer on sys.path
    assert _defined_in(model).is_relative_to(YOLOV5_REPO_FIXTURE)
    assert str(YOLOV5_REPO_FIXTURE) not in sys.path


@pytest.mark.parametrize("hw", [(320, 320), (640, 640), (256, 416)])
def test_yolov5n_output_shapes(yolov5n, hw):
    h, w = hw
    with torch.no_grad():
        out = yolov5n.model(torch.rand(1, 3, h, w))
    pred = select_predictions(out, yolov5n.layout)
    assert pred is out[0]
    n = sum(3 * (h // s) * (w // s) for s in (8, 16, 32))
    assert pred.shape == (1, n, 85) and pred.dtype == torch.float32
    if hw == (640, 640):
        assert n == 25200
    assert [tuple(r.shape) for r in out[1]] == [(1, 3, h // s, w // s, 85) for s in (8, 16, 32)]


def test_yolov5n_decode_matches_float64_reference(yolov5n):
    """Recompute the YOLOv5 v6.1 decode from the raw maps in float64 with the yaml's pixel anchors."""
    size = 320
    torch.manual_seed(0)
    with torch.no_grad():
        pred, raw = yolov5n.model(torch.rand(2, 3, size, size))
    anchors_px = np.asarray(yolov5n.model.yaml["anchors"], dtype=np.float64).reshape(3, 3, 2)
    parts = []
    for level, r in enumerate(raw):
        r = r.double().numpy()
        bs, na, ny, nx, no = r.shape
        stride = size / ny
        sig = 1.0 / (1.0 + np.exp(-r))
        gy, gx = np.indices((ny, nx), dtype=np.float64)
        cx = (sig[..., 0] * 2 - 0.5 + gx) * stride
        cy = (sig[..., 1] * 2 - 0.5 + gy) * stride
        bw = (sig[..., 2] * 2) ** 2 * anchors_px[level, :, 0].reshape(1, na, 1, 1)
        bh = (sig[..., 3] * 2) ** 2 * anchors_px[level, :, 1].reshape(1, na, 1, 1)
        out = np.concatenate([np.stack([cx, cy, bw, bh], -1), sig[..., 4:]], -1)
        parts.append(out.reshape(bs, -1, no))
    ref = np.concatenate(parts, 1)
    np.testing.assert_allclose(pred.double().numpy(), ref, rtol=1e-5, atol=1e-4)
    assert ref[..., 4:].min() >= 0 and ref[..., 4:].max() <= 1


def test_yolov5n_finds_the_bear_on_a_real_image(yolov5n, coco128_dir):
    """End to end on COCO val 285 (one bear): the top-scoring box is a bear overlapping the label, as in YOLOv5."""
    image = cv2.imread(str(coco128_dir / "images/val2017/000000000285.jpg"))
    h0, w0 = image.shape[:2]
    scale = 640 / max(h0, w0)
    resized = cv2.resize(image, (round(w0 * scale), round(h0 * scale)), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((640, 640, 3), 114, np.uint8)
    canvas[:resized.shape[0], :resized.shape[1]] = resized
    x = torch.from_numpy(canvas[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        pred = select_predictions(yolov5n.model(x), yolov5n.layout)[0]
    scores = pred[:, 4:5] * pred[:, 5:]
    best = int(scores.max(1).values.argmax())
    cls = int(scores[best].argmax())
    cx, cy, bw, bh = (pred[best, :4] / scale).tolist()
    label = np.loadtxt(coco128_dir / "labels/val2017/000000000285.txt", ndmin=2)[0]
    gx, gy, gw, gh = label[1] * w0, label[2] * h0, label[3] * w0, label[4] * h0
    iw = max(0.0, min(cx + bw / 2, gx + gw / 2) - max(cx - bw / 2, gx - gw / 2))
    ih = max(0.0, min(cy + bh / 2, gy + gh / 2) - max(cy - bh / 2, gy - gh / 2))
    iou = iw * ih / (bw * bh + gw * gh - iw * ih)
    assert yolov5n.names[cls] == "bear" and int(label[0]) == cls
    assert float(scores[best, cls]) > 0.5 and iou > 0.8


def test_fixture_model_builds_the_checkpoint_architecture(yolov5n):
    """Model(yaml) of the fixture repository has exactly the checkpoint's parameter names and shapes."""
    built = type(yolov5n.model)(yolov5n.model.yaml)
    ours, theirs = built.state_dict(), yolov5n.model.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_fuse_bn_on_yolov5n_keeps_outputs(yolov5n, yolov5n_path):
    fused = load_model(yolov5n_path, repo=YOLOV5_REPO_FIXTURE, fuse_bn=True)
    assert "batchnorm folded: 57" in fused.source
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.model.modules())
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        ref, raw_ref = yolov5n.model(x)
        got, raw_got = fused.model(x)
    assert _rel_diff(got, ref) < 1e-4
    assert max(_rel_diff(a, b) for a, b in zip(raw_got, raw_ref)) < 1e-4


# --- fold_batchnorm without files ---------------------------------------------------------------------------------


class _ConvBnAct(nn.Module):
    def __init__(self, c1: int, c2: int, groups: int = 1, bias: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, 3, 1, 1, groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


@pytest.mark.parametrize("groups,bias", [(1, False), (4, True)])
def test_fold_batchnorm_matches_float64_formula(groups, bias):
    torch.manual_seed(1)
    block = _ConvBnAct(8, 8, groups, bias).eval()
    bn = block.bn
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.1, 3)
    bn.weight.data.uniform_(-2, 2)
    bn.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 8, 9, 7)
    with torch.no_grad():  # reference: conv then the BN formula, in float64
        conv64 = copy.deepcopy(block.conv).double()
        y = conv64(x.double())
        y = (y - bn.running_mean.double().view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.double().view(1, -1, 1, 1)
                                                                          + bn.eps)
        ref = nn.functional.silu(y * bn.weight.double().view(1, -1, 1, 1) + bn.bias.double().view(1, -1, 1, 1))
    model = nn.Sequential(block, nn.Conv2d(8, 8, 1))  # a bare conv without a `bn` sibling stays as is
    assert fold_batchnorm(model) == 1
    assert isinstance(block.bn, nn.Identity) and block.conv.bias is not None
    assert model[1].bias is not None and fold_batchnorm(model) == 0
    with torch.no_grad():
        got = block(x)
    assert _rel_diff(got, ref) < 1e-5


# --- training-repository pickles: repositories on sys.path and their errors --------------------------------------


def test_tiny_checkpoint_loads_from_its_repository(tiny_checkpoint):
    repo, path = tiny_checkpoint
    loaded = load_model(path, repo=repo)
    assert loaded.layout == "yolov5" and loaded.names == ["0", "1"] and loaded.stride == 8
    assert next(loaded.model.parameters()).dtype == torch.float32
    with torch.no_grad():
        pred = select_predictions(loaded.model(torch.rand(1, 3, 64, 96)), loaded.layout)
    assert pred.shape == (1, 3 * (16 * 24 + 8 * 12), 7)
    assert _defined_in(loaded.model).is_relative_to(repo.resolve()) and str(repo.resolve()) not in sys.path


def test_two_repositories_do_not_clash(tiny_checkpoint, yolov5n_path):
    repo, tiny_path = tiny_checkpoint
    real = load_model(yolov5n_path, repo=YOLOV5_REPO_FIXTURE).model
    tiny = load_model(tiny_path, repo=repo).model
    again = load_model(yolov5n_path, repo=YOLOV5_REPO_FIXTURE).model
    assert type(real) is not type(tiny) and type(again) is not type(tiny)
    assert Path(sys.modules["models.yolo"].__file__).resolve().is_relative_to(YOLOV5_REPO_FIXTURE)
    with torch.no_grad():  # both keep working after the other repository replaced the cached modules
        assert real(torch.rand(1, 3, 64, 64))[0].shape == (1, 252, 85)
        assert tiny(torch.rand(1, 3, 64, 64))[0].shape == (1, 3 * (16 * 16 + 8 * 8), 7)


def test_missing_repository_error_names_checkpoint_class_and_flag(tiny_checkpoint, monkeypatch):
    _, path = tiny_checkpoint
    _forget_repo_modules(monkeypatch)
    with pytest.raises(ModelLoadError) as err:
        load_model(path)
    message = str(err.value)
    assert str(path) in message and "models.yolo" in message and "--repo PATH" in message


def test_real_checkpoint_without_repository_fails_clearly(yolov5n_path, monkeypatch):
    _forget_repo_modules(monkeypatch)
    with pytest.raises(ModelLoadError, match=r"models\.yolo\.Model.*pass --repo PATH \(the training repository"):
        load_model(yolov5n_path)


def test_wrong_repository_error(tiny_checkpoint, tmp_path, monkeypatch):
    _, path = tiny_checkpoint
    _forget_repo_modules(monkeypatch)
    empty = tmp_path / "empty_repo"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match=re.escape(str(empty.resolve()))):
        load_model(path, repo=empty)
    with pytest.raises(ModelLoadError, match="training repository not found"):
        load_model(path, repo=tmp_path / "no_such_repo")


# --- specs that are not loadable ----------------------------------------------------------------------------------


def test_nonexistent_path_errors(tmp_path, monkeypatch):
    missing = tmp_path / "runs" / "best.pt"
    with pytest.raises(ModelNotFoundError, match=re.escape(str(missing))):
        load_model(missing)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="cannot.*download|never downloads") as err:
        load_model("yolov8n.pt")
    assert "local path" in str(err.value)


def test_unknown_file_type_errors(tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07\x12\x07pytorch")
    with pytest.raises(ModelLoadError, match="unknown file type"):
        load_model(onnx)
    with pytest.raises(ModelLoadError, match="is a folder"):
        load_model(tmp_path)


def test_dataset_or_broken_yaml_as_model_is_refused_by_name(tmp_path):
    """The dataset yaml passed as the model (a common slip) is named as such before Ultralytics sees it."""
    shared_yaml = Path(__file__).resolve().parents[2] / "shared/data/coco128/coco128.yaml"
    data = tmp_path / "coco128.yaml"
    data.write_text("path: ../datasets/coco128\ntrain: images/train2017\nval: images/val2017\nnames:\n  0: person\n")
    for yml in (data, shared_yaml) if shared_yaml.exists() else (data,):
        with pytest.raises(ModelLoadError, match=re.escape(str(yml)) + ".*not a model config.*dataset yaml.*--data"):
            load_model(yml)
    other = tmp_path / "other.yaml"
    other.write_text("lr: 0.01\n")
    with pytest.raises(ModelLoadError, match=r"not a model config \(no 'backbone' and 'head' sections\); pass"):
        load_model(other)
    broken = tmp_path / "broken.yaml"
    broken.write_text("backbone: [unclosed\n")
    with pytest.raises(ModelLoadError, match=r"broken\.yaml: not readable as YAML"):
        load_model(broken)


# --- Ultralytics ----------------------------------------------------------------------------------------------------


def test_ultralytics_yaml_loads_with_dfl_kept_float():
    pytest.importorskip("ultralytics")
    loaded = load_model("yolov8n.yaml")
    assert loaded.layout == "ultralytics" and loaded.stride == 32 and loaded.num_classes == 80
    with torch.no_grad():
        pred = select_predictions(loaded.model(torch.rand(1, 3, 320, 320)), loaded.layout)
        only = PredictionOnly(loaded.model, loaded.layout)(torch.rand(1, 3, 320, 320))
    assert pred.shape == (1, 84, 2100) and only.shape == (1, 84, 2100) and isinstance(only, torch.Tensor)
    ignored = {name for name, _ in loaded.model.named_modules()
               if any(re.search(p, name) for p in loaded.default_ignore)}
    assert ignored == {"model.22.dfl", "model.22.dfl.conv"}
    assert all(re.fullmatch(p, "model.22.dfl.conv") for p in loaded.default_ignore)


def test_ultralytics_checkpoint_detected_by_content(tmp_path):
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    original = DetectionModel("yolov8n.yaml", nc=3, verbose=False).eval()
    path = tmp_path / "weights.pt"
    torch.save({"model": copy.deepcopy(original).half(), "train_args": {}}, path)
    loaded = load_model(path)
    assert loaded.layout == "ultralytics" and loaded.num_classes == 3 and "ultralytics:" in loaded.source
    assert next(loaded.model.parameters()).dtype == torch.float32
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        ref = select_predictions(original.half().float()(x), "ultralytics")
        got = select_predictions(loaded.model(x), loaded.layout)
    assert got.shape == (1, 7, 2100) and _rel_diff(got, ref) < 1e-5


# --- select_predictions ------------------------------------------------------------------------------------------


def test_select_predictions_unwraps_nested_outputs():
    pred, raw = torch.zeros(1, 10, 85), [torch.zeros(1, 3, 4, 4, 85)]
    assert select_predictions((pred, raw), "yolov5") is pred
    assert select_predictions([raw, pred], "yolov5") is pred
    assert select_predictions({"aux": torch.zeros(4), "pred": pred}, "yolov5") is pred
    assert select_predictions(pred, "yolov5") is pred
    with pytest.raises(ValueError, match="no .* prediction tensor"):
        select_predictions((torch.zeros(2, 2), [torch.zeros(1, 1, 1, 1)]), "yolov5")
    with pytest.raises(ValueError, match="does not fit layout"):
        select_predictions(torch.zeros(1, 10, 4), "yolov5")
    with pytest.raises(ValueError, match="unknown prediction layout"):
        select_predictions(pred, "yolox")


# --- YOLOv5 checkpoints through the pip `yolov5` package (no --repo) ----------------------------------------------

def _fake_yolov5_package(root: Path) -> Path:
    """A `yolov5` package laid out like the pip one (`yolov5.models.*`), made from the fixture repository."""
    package = root / "yolov5"
    shutil.copytree(YOLOV5_REPO_FIXTURE / "models", package / "models",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (package / "__init__.py").write_text("")
    yolo = package / "models" / "yolo.py"
    yolo.write_text(yolo.read_text().replace("from models.common", "from yolov5.models.common"))
    return root


@pytest.mark.parametrize("v7", [False, True], ids=["v6-Model", "v7-DetectionModel"])
def test_yolov5_pickles_load_through_the_pip_package_without_repo(yolov5n, yolov5n_path, tmp_path, monkeypatch, v7):
    """Without --repo, `models.yolo.Model` (v6) and `models.yolo.DetectionModel` (v7) come from `yolov5.models.*`:
    the same outputs as through the repository."""
    path = yolov5n_path
    if v7:  # re-save the real checkpoint under v7's class name
        model = load_model(yolov5n_path, repo=YOLOV5_REPO_FIXTURE).model  # classes = the modules cached now
        model.__class__ = sys.modules["models.yolo"].DetectionModel
        path = tmp_path / "yolov5n_v7.pt"
        torch.save({"model": model}, path)
    _forget_repo_modules(monkeypatch, also=("yolov5",))
    monkeypatch.syspath_prepend(str(_fake_yolov5_package(tmp_path / "site")))
    loaded = load_model(path)
    assert "pip package yolov5" in loaded.source
    assert type(loaded.model).__module__ == "yolov5.models.yolo"
    assert type(loaded.model).__name__ == ("DetectionModel" if v7 else "Model")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x)[0], yolov5n.model(x)[0])


@pytest.mark.skipif(importlib.util.find_spec("yolov5") is None,
                    reason="the pip `yolov5` package is not installed (its requirements are too heavy for CI); "
                           "the stand-in package test above covers the loader")
def test_real_yolov5_package_loads_the_official_checkpoint_without_repo(yolov5n, yolov5n_path, monkeypatch):
    """With the real pip `yolov5` installed, the official checkpoint loads without --repo and computes what the
    fixture repository's model computes."""
    _forget_repo_modules(monkeypatch)
    loaded = load_model(yolov5n_path)
    assert "pip package yolov5" in loaded.source
    assert type(loaded.model).__module__.startswith("yolov5.models")
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x)[0], yolov5n.model(x)[0], rtol=1e-4, atol=1e-4)


def test_broken_yolov5_package_is_one_clear_error(yolov5n_path, tmp_path, monkeypatch):
    """An installed `yolov5` whose own imports fail (a missing requirement) is named, with both ways out."""
    _forget_repo_modules(monkeypatch, also=("yolov5",))
    site = _fake_yolov5_package(tmp_path / "site")
    common = site / "yolov5" / "models" / "common.py"
    common.write_text(common.read_text() + "\nimport qdqtorch_missing_requirement  # noqa: E402\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(ModelLoadError, match=r"installed `yolov5` package failed.*qdqtorch_missing_requirement.*"
                                             r"pass --repo PATH"):
        load_model(yolov5n_path)


def test_demo_detector_records_its_training_image_size():
    """The demo detector was trained at 256 px: load_model reports it so evaluations default to it, not 640."""
    from conftest import REPO_ROOT
    from qdqtorch.models import load_model
    loaded = load_model(REPO_ROOT / "assets" / "demo" / "shapes_detector.safetensors")
    assert loaded.imgsz == 256 and loaded.names == ["circle", "square", "triangle"]
