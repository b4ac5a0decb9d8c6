"""scripts/sensitivity.py end to end on the toy model: merge of shards, kill -9 and resume, 2-process torchrun (gloo)
with distributed calibration, and the calibration all-reduce across two real processes."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qdqtorch.calib import HistogramCalibrator, MaxCalibrator
from qdqtorch.sensitivity import comparable
from test_sensitivity_toy import one_thread  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "sensitivity.py"
TOY = ["--model", "test_sensitivity_toy:build_model", "--calib-data", "test_sensitivity_toy:calib_batches",
       "--metric", "test_sensitivity_toy:metric", "--num-calib", "16", "--quiet", "--no-chart",
       "--calib-method", "max", "--rules", "none"]
# max: distributed calibration then equals one process's exactly (histograms rebin); a toy, not a detector: no rules


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"  # as the in-process reference (set_num_threads(1)): float sums in the same order
    env.update(extra)
    return env


def _script():
    spec = importlib.util.spec_from_file_location("sensitivity_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(out: Path) -> dict:
    return comparable(json.loads((out / "sensitivity.json").read_text()))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """One uninterrupted single-process run through the script's main()."""
    out = tmp_path_factory.mktemp("reference")
    torch.set_num_threads(1)
    assert _script().main(TOY + ["--out", str(out)]) == 0
    return _load(out)


def test_script_outputs_and_shard_merge(reference, tmp_path, capsys):
    script = _script()
    assert reference["complete"] and len(reference["entries"]) == 6
    for k in range(2):
        assert script.main(TOY + ["--out", str(tmp_path / f"s{k}"), "--shard", f"{k}/2"]) == 0
    assert "merge" in capsys.readouterr().out
    assert script.main(["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m"),
                        "--no-chart"]) == 0
    assert _load(tmp_path / "m") == reference
    # bad input is a one-line error, not a traceback
    assert script.main(TOY + ["--out", str(tmp_path / "x"), "--shard", "2/2"]) == 2
    assert "0 <= K < N" in capsys.readouterr().err


def test_kill_9_mid_sweep_then_resume(reference, tmp_path, capsys):
    """A second sweep on the same --out while the first runs is refused (not run twice); after kill -9 the lock
    is gone with the process and the same command resumes, saying how much was already done."""
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *TOY, "--out", str(out)], env=_env(TOY_SLEEP="0.4"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / "journal.jsonl"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if journal.exists() and journal.read_text().count('"type": "result"') >= 3:
                break
            if proc.poll() is not None:
                pytest.fail("the sweep finished before it could be killed")
            time.sleep(0.05)
        else:
            pytest.fail("no journal entries appeared")
        assert _script().main(TOY + ["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and "in use by another sweep" in err and f"process {proc.pid}" in err
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "sensitivity.json").exists()
    done = journal.read_text().count('"type": "result"')
    assert 3 <= done < 8
    assert _script().main(TOY + ["--out", str(out)]) == 0  # the same command again resumes
    assert f"resuming: {done} of 8 evaluations already done" in capsys.readouterr().err
    result = json.loads((out / "sensitivity.json").read_text())
    assert result["timing"]["resumed_from_journal"] == done
    assert comparable(result) == reference


def test_torchrun_two_ranks_equals_one_process(reference, tmp_path):
    out = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SCRIPT),
           *TOY, "--out", str(out), "--calib-distributed"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("journal*")) == ["journal.rank-0-of-2.jsonl", "journal.rank-1-of-2.jsonl"]
    # the fingerprint covers every amax: distributed max calibration equals the single-process one exactly
    assert _load(out) == reference


def _calibrator_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist
    from qdqtorch.quantize.distributed import all_reduce_calibrators

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model = _calib_model()
        for batch in _calib_data()[rank::world]:
            for q in (model._input_quantizer, model._weight_quantizer):
                q.calibrator.collect(batch)
        all_reduce_calibrators(model)
        mx, hist = model._input_quantizer.calibrator, model._weight_quantizer.calibrator
        torch.save({"max": mx.compute_amax(), "n": mx.num_collected, "counts": hist.counts, "width": hist.bin_width,
                    "hist_n": hist.num_collected}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _calib_data():
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(2, 4, 5, generator=gen) * (1 + i) for i in range(4)]
    batches[0][0, 0, 0] = batches[1][0, 0, 0] = 50.0  # both ranks' first batch sets the same bin width
    return batches


class _Holder(torch.nn.Module):
    """Two quantizers: a per-channel max calibrator and a histogram calibrator."""

    def __init__(self):
        super().__init__()
        from qdqtorch import TensorQuantizer
        self._input_quantizer = TensorQuantizer({"axis": 1})
        self._weight_quantizer = TensorQuantizer({"calibrator": "histogram"})


def _calib_model():
    return _Holder()


def test_calibration_all_reduce_across_two_processes(tmp_path):
    init = f"file://{tmp_path / 'rendezvous'}"
    torch.multiprocessing.spawn(_calibrator_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single_max, single_hist = MaxCalibrator(axis=1), HistogramCalibrator()
    for batch in _calib_data():
        single_max.collect(batch)
        single_hist.collect(batch)
    for state in ranks:
        assert torch.equal(state["max"], single_max.compute_amax()) and state["n"] == 4
        assert state["width"] == single_hist.bin_width and state["hist_n"] == 4
        assert torch.equal(state["counts"], single_hist.counts)
