"""qdqtorch.data: preprocessing settings, letterbox geometry, sources, bad images, tensor files, loaders."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from conftest import REPO_ROOT
from qdqtorch.data import (BadImageError, CalibrationDataset, EmptySourceError, Preprocess, PreprocessError,
                           TensorFileError, calibration_loader, dataset_split, letterbox, load_preprocess,
                           plain_resize, read_image, read_list_file, resolve_source, save_preprocess)


def _write_img(path: Path, h: int = 20, w: int = 30, bgr=(10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = bgr
    assert cv2.imwrite(str(path), img)
    return path


# ------------------------------------------------------------------------------------------------- preprocess
def test_preprocess_round_trips_through_dict_json_yaml(tmp_path):
    pp = Preprocess(imgsz=[320, 256], color="bgr", mean=[1, 2, 3], std=2, resize="resize", dtype="float16")
    assert pp.std == [2.0, 2.0, 2.0] and pp.hw == (320, 256) and pp.input_shape == (3, 320, 256)
    assert Preprocess.from_dict(pp.to_dict()) == pp
    assert Preprocess.from_dict(json.loads(pp.to_json())) == pp
    for name in ("pp.yaml", "pp.json"):
        save_preprocess([pp, Preprocess()], tmp_path / name)
        assert load_preprocess(tmp_path / name) == [pp, Preprocess()]


def test_preprocess_aliases_and_errors():
    pp = Preprocess.from_dict({"input_shape": [1, 3, 64, 96], "mean_value": [0, 0, 0], "std_value": [58, 57, 57]})
    assert pp.hw == (64, 96) and pp.channels == 3 and pp.std == [58.0, 57.0, 57.0]
    with pytest.raises(PreprocessError, match="'imgsize'"):
        Preprocess.from_dict({"imgsize": 640})
    with pytest.raises(PreprocessError, match="'color'"):
        Preprocess(color="rgba")
    with pytest.raises(PreprocessError, match="multiple"):
        Preprocess(imgsz=100)           # not a multiple of stride 32 for letterbox
    with pytest.raises(PreprocessError, match="'mean' has 2 values"):
        Preprocess(mean=[1, 2])


# ------------------------------------------------------------------------------------------------- geometry
def test_letterbox_matches_hand_computation_and_round_trips():
    img = np.full((90, 200, 3), 7, np.uint8)
    out, info = letterbox(img, 64, pad_value=114, interpolation="nearest")
    # r = min(64/90, 64/200) = 0.32 -> 64 x round(28.8) = 29 rows; 35 rows of padding: 17 on top, 18 below
    assert out.shape == (64, 64, 3)
    assert info.orig_hw == (90, 200) and info.pad == (0.0, 17.0)
    assert info.ratio == pytest.approx((64 / 200, 29 / 90))
    assert (out[:17] == 114).all() and (out[17:46] == 7).all() and (out[46:] == 114).all()
    boxes = torch.tensor([[100.0, 45.0, 150.0, 90.0]])
    net = info.to_input(boxes)
    assert net[0].tolist() == pytest.approx([32.0, 45 * 29 / 90 + 17, 48.0, 29 + 17])
    assert info.to_original(net)[0].tolist() == pytest.approx(boxes[0].tolist())
    # out-of-image boxes are clipped to the original size
    assert info.to_original(torch.tensor([[-5.0, 0.0, 70.0, 64.0]]))[0].tolist() == pytest.approx(
        [0.0, 0.0, 200.0, 90.0])


def test_letterbox_without_scaleup_and_plain_resize():
    img = np.zeros((10, 20, 3), np.uint8)
    out, info = letterbox(img, 64, scaleup=False, center=False)
    assert out.shape == (64, 64, 3) and info.ratio == (1.0, 1.0) and info.pad == (0.0, 0.0)
    out, info = plain_resize(img, (40, 30))
    assert out.shape == (40, 30, 3) and info.ratio == (1.5, 4.0) and info.pad == (0.0, 0.0)


def test_pixel_normalisation_and_color_order(tmp_path):
    _write_img(tmp_path / "a.png", 32, 32, bgr=(10, 20, 30))
    rgb = CalibrationDataset(tmp_path, Preprocess(imgsz=32))[0]
    assert rgb[:, 0, 0].tolist() == pytest.approx([30 / 255, 20 / 255, 10 / 255])
    bgr = CalibrationDataset(tmp_path, Preprocess(imgsz=32, color="bgr", mean=[10, 10, 10], std=[2, 4, 5]))[0]
    assert bgr[:, 0, 0].tolist() == pytest.approx([0.0, 2.5, 4.0])
    half = CalibrationDataset(tmp_path, Preprocess(imgsz=32, dtype="float16"))[0]
    assert half.dtype == torch.float16


# ------------------------------------------------------------------------------------------------- sources
def test_list_file_resolves_relative_and_absolute_paths(tmp_path):
    a = _write_img(tmp_path / "imgs" / "a.jpg")
    b = _write_img(tmp_path / "elsewhere" / "b.png")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "calib.txt").write_text(f"# calibration set\n\n../imgs/a.jpg\n{b.resolve()}\n   \n")
    assert [p.resolve() for p in read_list_file(lists / "calib.txt")] == [a.resolve(), b.resolve()]
    (lists / "bad.txt").write_text("../imgs/missing.jpg\n")
    with pytest.raises(FileNotFoundError, match=r"bad.txt:1.*missing.jpg"):
        read_list_file(lists / "bad.txt")


def test_empty_sources_are_errors_naming_the_path(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.md").write_text("no images here")
    with pytest.raises(EmptySourceError, match=str(empty)):
        resolve_source(empty)
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(EmptySourceError, match="empty.txt"):
        calibration_loader(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_source(tmp_path / "nowhere")


def test_folder_source_is_recursive_and_sorted(tmp_path):
    paths = [_write_img(tmp_path / p) for p in ("b.jpg", "a/z.png", "a/y/x.bmp")]
    (tmp_path / "a" / "readme.txt").write_text("not an image")
    assert resolve_source(tmp_path) == sorted(paths)


def test_dataset_yaml_split_resolution(tmp_path):
    root = tmp_path / "ds"
    tr = [_write_img(root / "images" / "train" / f"{i}.jpg") for i in range(3)]
    va = _write_img(root / "images" / "val" / "v.jpg")
    extra = _write_img(root / "more" / "m.jpg")
    (root / "extra.txt").write_text("more/m.jpg\n")
    # no path: -> relative to the yaml's folder; split may be a list of folders and list files
    (root / "data.yaml").write_text(yaml.safe_dump({"train": ["images/train", "extra.txt"], "val": "images/val"}))
    assert dataset_split(root / "data.yaml", "train") == tr + [extra]
    assert resolve_source(f"{root / 'data.yaml'}:val") == [va]
    # path: relative to the yaml's folder, and absolute
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "rel.yaml").write_text(yaml.safe_dump({"path": "../ds", "train": "images/train"}))
    assert [p.resolve() for p in dataset_split(cfg / "rel.yaml")] == [p.resolve() for p in tr]
    (cfg / "abs.yaml").write_text(yaml.safe_dump({"path": str(root), "val": "images/val"}))
    assert dataset_split(cfg / "abs.yaml", "val") == [va]
    with pytest.raises(KeyError, match="no 'test:' split"):
        dataset_split(cfg / "abs.yaml", "test")
    (cfg / "gone.yaml").write_text(yaml.safe_dump({"path": "../nope", "train": "images"}))
    with pytest.raises(FileNotFoundError, match="nope"):
        dataset_split(cfg / "gone.yaml")


# ------------------------------------------------------------------------------------------------- bad images
def test_bad_images_are_converted_or_skipped_with_one_warning(tmp_path):
    _write_img(tmp_path / "ok.jpg", 16, 16, bgr=(0, 0, 200))
    cv2.imwrite(str(tmp_path / "gray.png"), np.full((16, 16), 77, np.uint8))
    cv2.imwrite(str(tmp_path / "deep.png"), np.full((16, 16, 3), 100 * 256, np.uint16))
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 1], rgba[..., 3] = 50, 10
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" * 3)
    (tmp_path / "empty.png").write_bytes(b"")
    pp = Preprocess(imgsz=32, color="bgr", std=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(calibration_loader(tmp_path, pp, batch_size=4))
    msgs = [str(w.message) for w in caught if "could not be read" in str(w.message)]
    assert len(msgs) == 1 and "skipped 2 of 6" in msgs[0]
    assert "corrupt.jpg" in msgs[0] and "empty.png" in msgs[0]
    x = torch.cat(batches)              # sorted: deep, gray, ok, rgba
    assert x.shape == (4, 3, 32, 32)
    center = x[:, :, 16, 16]
    assert center[0].tolist() == [100, 100, 100]        # 16-bit -> 8-bit
    assert center[1].tolist() == [77, 77, 77]           # gray -> 3 channels
    assert center[2].tolist() == pytest.approx([0, 0, 200], abs=2)
    assert center[3].tolist() == [0, 50, 0]             # alpha dropped
    with pytest.raises(BadImageError, match="corrupt.jpg"):
        read_image(tmp_path / "corrupt.jpg")


def test_all_unreadable_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(BadImageError, match="none of the 1"):
        list(calibration_loader(tmp_path, Preprocess(imgsz=32)))


# ------------------------------------------------------------------------------------------------- tensors
def test_npy_and_raw_tensor_files(tmp_path):
    pp = Preprocess(imgsz=[4, 6], channels=2, stride=1)
    one = np.arange(48, dtype=np.float32).reshape(2, 4, 6)
    np.save(tmp_path / "a.npy", one)
    np.save(tmp_path / "b.npy", np.stack([one + 100, one + 200]))
    np.concatenate([one + 300, one + 400]).astype("<f4").tofile(tmp_path / "c.raw")
    ds = CalibrationDataset(tmp_path, pp)
    assert len(ds) == 5
    x = torch.cat(list(calibration_loader(tmp_path, pp, batch_size=2)))
    assert x.shape == (5, 2, 4, 6)
    assert x[:, 0, 0, 0].tolist() == [0, 100, 200, 300, 400]
    assert torch.equal(x[4], torch.from_numpy(one + 400))
    np.save(tmp_path / "wrong.npy", np.zeros((3, 4, 6), np.float32))
    with pytest.raises(TensorFileError, match="wrong.npy"):
        CalibrationDataset(tmp_path, pp)
    (tmp_path / "wrong.npy").unlink()
    (tmp_path / "odd.bin").write_bytes(b"\0" * 10)
    with pytest.raises(TensorFileError, match="odd.bin"):
        CalibrationDataset(tmp_path, pp)


# ------------------------------------------------------------------------------------------------- loaders
def test_loader_batches_num_images_and_shuffle(tmp_path):
    for i in range(7):
        _write_img(tmp_path / f"{i}.png", 8, 8, bgr=(i, i, i))
    pp = Preprocess(imgsz=32, std=1)
    loader = calibration_loader(tmp_path, pp, batch_size=3, num_images=5)
    shapes = [tuple(b.shape) for b in loader]
    assert shapes == [(3, 3, 32, 32), (2, 3, 32, 32)] and len(loader) == 2
    order = torch.cat(list(calibration_loader(tmp_path, pp, batch_size=3, shuffle=True, seed=1)))[:, 0, 16, 16]
    again = torch.cat(list(calibration_loader(tmp_path, pp, batch_size=3, shuffle=True, seed=1)))[:, 0, 16, 16]
    assert sorted(order.tolist()) == list(range(7)) and torch.equal(order, again)
    # workers give the same batches
    with_workers = torch.cat(list(calibration_loader(tmp_path, pp, batch_size=3, workers=2)))
    assert torch.equal(with_workers, torch.cat(list(calibration_loader(tmp_path, pp, batch_size=3))))


def test_multi_input_sources(tmp_path):
    (tmp_path / "b").mkdir()
    for i in range(3):
        _write_img(tmp_path / "a" / f"{i}.png", 8, 8, bgr=(i, i, i))
        np.save(tmp_path / "b" / f"{i}.npy", np.full((1, 1, 5), i, np.float32))
    pps = [Preprocess(imgsz=32, std=1), Preprocess(imgsz=[1, 5], channels=1, resize="resize")]
    batches = list(calibration_loader([tmp_path / "a", tmp_path / "b"], pps, batch_size=2))
    assert [tuple(t.shape) for t in batches[0]] == [(2, 3, 32, 32), (2, 1, 1, 5)]
    assert batches[1][0][:, 0, 16, 16].tolist() == [2] and batches[1][1][:, 0, 0, 0].tolist() == [2]
    with pytest.raises(ValueError, match="one source per input"):
        calibration_loader(tmp_path / "a", pps)
    _write_img(tmp_path / "a" / "3.png")
    with pytest.raises(ValueError, match="same number of samples"):
        calibration_loader([tmp_path / "a", tmp_path / "b"], pps)


def test_custom_hook_gets_batches_of_paths(tmp_path):
    for i in range(5):
        _write_img(tmp_path / "imgs" / f"{i}.png")
    hook = tmp_path / "my_hook.py"
    hook.write_text(
        "import torch\n"
        "CALLS = []\n"
        "def prep(paths, settings):\n"
        "    CALLS.append(len(paths))\n"
        "    return torch.full((len(paths), settings.channels, *settings.hw), float(len(paths)))\n")
    pp = Preprocess.from_dict({"imgsz": 64, "hook": f"{hook}:prep"})
    batches = list(calibration_loader(tmp_path / "imgs", pp, batch_size=2))
    assert [b.shape[0] for b in batches] == [2, 2, 1] and batches[0][0, 0, 0, 0] == 2
    bad = Preprocess.from_dict({"hook": f"{hook}:nothing"})
    with pytest.raises(ValueError, match="nothing"):
        calibration_loader(tmp_path / "imgs", bad)


def test_real_calibration_images(coco128_dir):
    loader = calibration_loader(coco128_dir / "coco128.yaml", Preprocess.yolo(96), batch_size=4, num_images=6)
    batches = list(loader)
    assert [b.shape for b in batches] == [(4, 3, 96, 96), (2, 3, 96, 96)]
    x = batches[0]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and x.std() > 0.1
    # letterbox padding of the first (landscape) image is gray 114
    assert x[0, :, 0, :].unique().tolist() == pytest.approx([114 / 255])


def test_truncated_jpeg_is_skipped_with_its_name_and_not_counted(tmp_path, capfd):
    """A JPEG cut in half decodes (libjpeg) to a half-grey image: it must be skipped by name, not used."""
    demo = sorted((REPO_ROOT / "assets" / "demo").rglob("*.jpg"))[:3]
    for src in demo:
        (tmp_path / src.name).write_bytes(src.read_bytes())
    whole = (tmp_path / demo[0].name).read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "trailing.jpg").write_bytes(whole + b"appended after EOI")   # legal: decodes fully, is used
    with pytest.raises(BadImageError, match="truncated.jpg"):
        read_image(tmp_path / "truncated.jpg")
    assert read_image(tmp_path / "trailing.jpg").shape == read_image(tmp_path / demo[0].name).shape
    loader = calibration_loader(tmp_path, Preprocess(imgsz=64), batch_size=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = torch.cat(list(loader))
    msgs = [str(w.message) for w in caught if "could not be read" in str(w.message)]
    assert len(msgs) == 1 and "skipped 1 of 5" in msgs[0] and "truncated.jpg" in msgs[0]
    assert x.shape[0] == 4 and loader.images_used == 4


def test_truncated_jpeg_is_not_evaluated(tmp_path):
    """EvalSet skips a truncated image by name; its count is the images actually evaluated."""
    from qdqtorch.eval import EvalSet
    demo = REPO_ROOT / "assets" / "demo"
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for src in sorted((demo / "images" / "val").glob("*.jpg"))[:3]:
        (tmp_path / "images" / src.name).write_bytes(src.read_bytes())
        label = demo / "labels" / "val" / f"{src.stem}.txt"
        (tmp_path / "labels" / label.name).write_bytes(label.read_bytes())
    victim = sorted((tmp_path / "images").glob("*.jpg"))[1]
    victim.write_bytes(victim.read_bytes()[:-2000])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eval_set = EvalSet.from_yolo(tmp_path / "images", Preprocess(imgsz=64), names=["a", "b", "c"], progress=False)
    assert len(eval_set) == 2 and victim not in eval_set.paths
    assert any(victim.name in str(w.message) for w in caught)
