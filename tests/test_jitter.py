"""The grain of a figure (qdqtorch.eval.jitter, BENCHMARKS.md §8l): every bias moves by exactly one float32 ulp
(checked against numpy's spacing), nothing else moves, draws are seeded, the copies are what `jitter` scores, and a
PTQ run with jitter_draws reports the spread of its INT8 figures on the real YOLOv5n, each draw reproduced here by
hand."""
import copy

import numpy as np
import pytest
import torch

from conftest import YOLOV5_REPO_FIXTURE
from qdqtorch.errors import UsageError
from qdqtorch.eval import evaluate as evaluate_model
from qdqtorch.eval import fidelity
from qdqtorch.eval.jitter import jitter, perturb_biases
from qdqtorch.ptq import PTQSettings, calibrate, evaluate, export, measure_jitter, prepare, table


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1),
                               torch.nn.Conv2d(4, 4, 1, bias=False))


def test_every_bias_moves_one_ulp_and_nothing_else():
    model = _model()
    with torch.no_grad():
        model[1].bias.copy_(torch.linspace(-2, 2, 8))   # includes values of both signs; 0 is not among them
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moved = perturb_biases(model, seed=1)
    assert moved == 8 + 8 + 4
    after = model.state_dict()
    for key, old in before.items():
        if key.endswith(".bias"):
            old64, new64 = old.double().numpy(), after[key].double().numpy()
            ulp = np.spacing(np.abs(old.numpy())).astype(np.float64)      # float32 ulp at each value
            gap = np.abs(new64 - old64)
            # one ulp up or down; going down from a power of two the step below is half as wide
            assert np.all((gap == ulp) | (gap == ulp / 2)), key
        else:
            assert torch.equal(after[key], old), key
    ups = [(after[k] > v).float().mean().item() for k, v in before.items() if k.endswith(".bias")]
    assert 0.0 < sum(ups) / len(ups) < 1.0     # both directions occur


def test_the_same_seed_gives_the_same_copy_and_another_seed_does_not():
    a, b, c = _model(), _model(), _model()
    perturb_biases(a, seed=3)
    perturb_biases(b, seed=3)
    perturb_biases(c, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))


def _bias_sum(model: torch.nn.Module) -> dict:
    """A figure that sees every bias exactly: their float64 sum."""
    return {"sum": float(sum(p.detach().double().sum() for n, p in model.named_parameters() if n.endswith("bias")))}


def test_jitter_scores_the_model_and_copies_seeded_1_to_n_and_leaves_the_model_alone():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    found = jitter(model, _bias_sum, draws=3)
    expected = [_bias_sum(model)["sum"]]
    for seed in (1, 2, 3):
        twin = copy.deepcopy(model)
        perturb_biases(twin, seed)
        expected.append(_bias_sum(twin)["sum"])
    assert found.figures["sum"] == expected and found.seeds == [1, 2, 3] and found.biases_moved == 20
    assert len(set(expected)) == 4                      # every draw is another model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    s = found.spread("sum")
    assert s["n"] == 4 and s["min"] == min(expected) and s["max"] == max(expected)
    assert s["mean"] == pytest.approx(np.mean(expected)) and s["stdev"] == pytest.approx(np.std(expected, ddof=1))


def test_a_figure_already_measured_is_not_measured_again():
    calls = []

    def score(m):
        calls.append(m)
        return _bias_sum(m)
    model = _model()
    found = jitter(model, score, draws=2, unperturbed={"sum": 123.0})
    assert found.figures["sum"][0] == 123.0 and len(calls) == 2 and all(c is not model for c in calls)


def test_what_jitter_cannot_measure_is_an_error():
    with pytest.raises(UsageError, match="no floating-point bias"):
        jitter(torch.nn.Conv2d(3, 3, 1, bias=False), lambda m: pytest.fail("scored before the check"), draws=2)
    with pytest.raises(UsageError, match="at least 1"):
        jitter(_model(), _bias_sum, draws=0)
    with pytest.raises(UsageError, match="draw 1 has no 'other'"):
        jitter(_model(), lambda m: {"sum": 0.0}, draws=1, unperturbed={"other": 1.0})
    with pytest.raises(UsageError, match="jitter_draws"):
        PTQSettings(model="m.pt", data="d.yaml", jitter_draws=-1)


def test_a_ptq_run_reports_the_grain_of_its_int8_figures_on_yolov5n(yolov5n_path, coco128_dir, tmp_path):
    """INT8 YOLOv5n notices one-ulp bias changes (its figures move), in fake quant and in ONNX Runtime; every draw is
    the copy it claims to be (rescored by hand at the run's batch size: another batch size sums in another order,
    which is itself a jitter)."""
    settings = PTQSettings(model=str(yolov5n_path), repo=str(YOLOV5_REPO_FIXTURE), imgsz=320, batch=8, num_calib=8,
                           num_eval=16, data=str(coco128_dir / "coco128.yaml"), jitter_draws=2)
    log = lambda *_: None  # noqa: E731
    prep = prepare(settings, progress=False, log=log)
    calibrate(prep, progress=False)
    with pytest.raises(UsageError, match="evaluate"):
        measure_jitter(prep, progress=False, log=log)
    evaluate(prep, "int8", progress=False, log=log)
    found = measure_jitter(prep, progress=False, log=log)
    fid, coco = found.figures["fidelity"], found.figures["map50_95"]
    assert fid[0] == prep.summary["fidelity"]["int8"]["map50_95"] and coco[0] == prep.summary["int8"]["map50_95"]
    assert len(fid) == len(coco) == 3
    twin = copy.deepcopy(prep.model)
    perturb_biases(twin, seed=2)
    assert fidelity(twin, prep.reference, batch_size=8, outputs=False).map50_95 == pytest.approx(fid[2], abs=1e-12)
    by_hand = evaluate_model(twin, prep.eval_set, layout=prep.layout, batch_size=8, progress=False).map50_95
    assert by_hand == pytest.approx(coco[2], abs=1e-12)
    assert len(set(fid + coco)) > 2, "no draw moved any INT8 figure"
    recorded = prep.summary["jitter"]["int8"]["figures"]["fidelity"]
    assert recorded["values"] == fid and recorded["n"] == 3
    assert "fake quant (PyTorch) with every bias moved by one float32 ulp (2 draws and the model itself)" in \
        table(prep.summary)
    again = evaluate(prep, "int8", progress=False, log=log)
    assert again.map50_95 == coco[0], "the jitter changed the model it measured"

    pytest.importorskip("onnxruntime")
    from qdqtorch.export import export_onnx
    from qdqtorch.export.runtime import OnnxRuntimeModule
    from qdqtorch.models import PredictionOnly
    evaluate(prep, "int8_onnxruntime", OnnxRuntimeModule(export(prep, tmp_path)), progress=False, log=log)
    ort = measure_jitter(prep, "int8_onnxruntime", progress=False, log=log).figures["fidelity"]
    assert ort[0] == prep.summary["fidelity"]["int8_onnxruntime"]["map50_95"] and len(ort) == 3
    path = export_onnx(PredictionOnly(twin, prep.layout), prep.sample, tmp_path / "twin.onnx")
    by_hand = fidelity(OnnxRuntimeModule(path), prep.reference, batch_size=8, outputs=False).map50_95
    assert by_hand == pytest.approx(ort[2], abs=1e-12)
    assert set(prep.summary["jitter"]) == {"int8", "int8_onnxruntime"}
    assert "ONNX Runtime) with every bias moved by one float32 ulp" in table(prep.summary)


def test_an_interrupted_jitter_keeps_the_int8_figures_on_disk(tmp_path, monkeypatch):
    """Ctrl-C during the draws: summary.json already holds the fake-quant fidelity the run measured."""
    import json

    import qdqtorch.pipeline.run as run_module
    from conftest import REPO_ROOT

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(run_module, "measure_jitter", interrupted)
    demo = REPO_ROOT / "assets" / "demo"
    settings = PTQSettings(model=str(demo / "shapes_detector.safetensors"), data=str(demo / "shapes.yaml"),
                           num_calib=8, num_eval=8, batch=8, out=str(tmp_path), jitter_draws=2, export=False)
    with pytest.raises(KeyboardInterrupt):
        run_module.run_ptq(settings, progress=False, log=lambda *_: None)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert 0 < summary["fidelity"]["int8"]["map50_95"] <= 1 and "jitter" not in summary
