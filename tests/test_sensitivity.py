"""qdqtorch.sensitivity on a toy model with a synthetic metric: ranking, resume, shards, budget, proxy, outputs."""
from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

import qdqtorch
from qdqtorch.quantize import QuantConfig, load_calibration, save_calibration
from qdqtorch.sensitivity import (FingerprintMismatch, Metric, SweepSettings, check_result, comparable,
                                  find_units, merge_outputs, proxy_pass, run_sensitivity)
from qdqtorch.sensitivity.journal import read_journal
from test_sensitivity_toy import build_model, calib_batches, metric, one_thread, quantized_toy  # noqa: F401

BROKEN = "4.0"  # layer whose input amax gets divided by 100


def broken_toy():
    model = quantized_toy()
    q = dict(qdqtorch.named_quantizers(model))[f"{BROKEN}._input_quantizer"]
    q.amax = q.amax / 100
    return model


def toy_metric(limit=None, calls=None):
    """The synthetic metric under one fixed name (same fingerprint), optionally dying after `limit` calls."""
    def fn(model):
        if calls is not None:
            calls.append(1)
        if limit is not None and len(calls) > limit:
            raise KeyboardInterrupt("simulated kill")
        return metric(model)
    return Metric(fn, "toy", description={"metric": "toy", "images": 16})


def run(out, model=None, **kw):
    settings = SweepSettings(**{"chart": False, **kw})
    return run_sensitivity(model or broken_toy(), toy_metric(), out, settings, progress=False,
                           proxy_data=calib_batches()[:1])


def test_broken_quantizer_ranks_first_in_both_modes(tmp_path):
    result = run(tmp_path / "a")
    check_result(result)
    assert result["entries"][0]["unit"] == BROKEN
    assert result["baselines"]["float"]["metric"] == pytest.approx(1.0)
    quant = result["baselines"]["quantized"]["metric"]
    top = result["entries"][0]
    assert top["impact"] == pytest.approx(top["metric"] - quant)
    assert top["impact"] > 10 * result["entries"][1]["impact"] > 0
    assert [e["rank"] for e in result["entries"]] == list(range(1, 7))
    assert result["recommendation"]["units"][0] == BROKEN
    assert result["recommendation"]["ignore"][0] == r"^4\.0$"
    enable = run(tmp_path / "b", mode="enable-one")
    assert enable["entries"][0]["unit"] == BROKEN
    e0 = enable["entries"][0]
    assert e0["impact"] == pytest.approx(1.0 - e0["metric"])
    # the proxy sees it too, and agrees with the metric ranking
    assert result["proxy"]["ranking"][0] == BROKEN
    assert result["proxy"]["rank_correlation"]["n"] == 6


def test_quantizer_and_block_units(tmp_path):
    by_q = run(tmp_path / "q", unit="quantizer")
    assert by_q["entries"][0]["unit"] == f"{BROKEN}._input_quantizer"
    by_block = run(tmp_path / "b", unit="block")
    assert by_block["entries"][0]["unit"] == "4"
    assert by_block["recommendation"]["ignore"][0] == r"^4(\..+)?$"


def test_outputs_written_and_config_usable(tmp_path):
    base = {"kind": "quant", "data": QuantConfig().to_dict()}
    result = run_sensitivity(broken_toy(), toy_metric(), tmp_path, SweepSettings(topk=3), progress=False,
                             proxy_data=calib_batches()[:1], base_config=base)
    for name in ("sensitivity.json", "sensitivity.md", "sensitivity.png", "sensitivity_proxy.md",
                 "sensitivity_config.yaml", "journal.jsonl"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "sensitivity.json").read_text())
    assert comparable(saved) == comparable(result)
    md = (tmp_path / "sensitivity.md").read_text()
    assert f"| 1 | `{BROKEN}` |" in md and "| 4 |" not in md  # topk=3 rows
    proxy_md = (tmp_path / "sensitivity_proxy.md").read_text()
    assert "| Op | Var | SNR (dB) | MSE | Cosine | Q.MinMax | F.MinMax | F.Hist |" in proxy_md
    assert f"⚠ QuantConv2d | {BROKEN} |" in proxy_md
    config = QuantConfig.from_file(tmp_path / "sensitivity_config.yaml")
    assert config.ignore == result["recommendation"]["ignore"]


def test_resume_after_crash_gives_the_same_result(tmp_path):
    reference = run(tmp_path / "ref")
    calls = []
    with pytest.raises(KeyboardInterrupt):
        run_sensitivity(broken_toy(), toy_metric(limit=4, calls=calls), tmp_path / "crash",
                        SweepSettings(chart=False), progress=False, proxy_data=calib_batches()[:1])
    _, done = read_journal(tmp_path / "crash" / "journal.jsonl")
    assert len(done) == 4  # 2 baselines + 2 units survived the crash
    calls.clear()
    resumed = run_sensitivity(broken_toy(), toy_metric(calls=calls), tmp_path / "crash",
                              SweepSettings(chart=False), progress=False, proxy_data=calib_batches()[:1])
    assert len(calls) == 1 + 4  # the reference pass is re-recorded for prefix reuse, then the 4 missing units
    assert comparable(resumed) == comparable(reference)
    assert resumed["timing"]["resumed_from_journal"] == 4


def test_torn_journal_line_is_dropped(tmp_path):
    reference = run(tmp_path / "ref")
    out = tmp_path / "torn"
    run(out)
    path = out / "journal.jsonl"
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:4]) + b"\n" + lines[4][:10])  # header, 3 results, half a line
    calls = []
    resumed = run_sensitivity(broken_toy(), toy_metric(calls=calls), out, SweepSettings(chart=False),
                              progress=False, proxy_data=calib_batches()[:1])
    assert len(calls) == 1 + 8 - 3  # re-recording the reference pass, then the missing jobs
    assert comparable(resumed) == comparable(reference)
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_foreign_fingerprint_is_refused(tmp_path):
    run(tmp_path)
    with pytest.raises(FingerprintMismatch, match="different model, data or settings"):
        run(tmp_path, model=quantized_toy())  # not broken: other amax
    with pytest.raises(FingerprintMismatch):
        run(tmp_path, mode="enable-one")
    fresh = run_sensitivity(quantized_toy(), toy_metric(), tmp_path, SweepSettings(chart=False), fresh=True,
                            progress=False)
    assert fresh["entries"][0]["unit"] != BROKEN


def test_two_shards_merged_equal_one_run(tmp_path):
    single = run(tmp_path / "single")
    parts = [run(tmp_path / f"shard{k}", shard=(k, 2)) for k in range(2)]
    assert all(not p["complete"] for p in parts)
    assert sum(len(p["entries"]) for p in parts) == 6
    merged = merge_outputs([tmp_path / "shard0", tmp_path / "shard1"], tmp_path / "merged", recommend=3,
                           chart=False)
    assert merged["complete"]
    assert comparable(merged) == comparable(single)
    with pytest.raises(FingerprintMismatch):
        run(tmp_path / "other", model=quantized_toy(), shard=(0, 2))
        merge_outputs([tmp_path / "shard0", tmp_path / "other"], tmp_path / "bad")


def test_budget_selection_is_verified_within_budget(tmp_path):
    model = broken_toy()
    save_calibration(model, tmp_path / "cal.json")
    budget = 0.01

    def fresh_model(units):
        fresh = build_model()
        regexes = [r for u in units for r in u.ignore_regexes()]
        qdqtorch.quantize_model(fresh, QuantConfig(ignore=regexes))
        load_calibration(fresh, tmp_path / "cal.json", strict=False)
        return fresh

    result = run_sensitivity(model, toy_metric(), tmp_path / "out", SweepSettings(budget=str(budget), chart=False),
                             progress=False, verify_factory=fresh_model,
                             base_config={"kind": "quant", "data": QuantConfig().to_dict()})
    b = result["budget"]
    float_metric = result["baselines"]["float"]["metric"]
    assert result["baselines"]["quantized"]["metric"] < float_metric - budget  # the budget matters
    assert b["selected"][0] == BROKEN and b["within_budget"]
    v = b["verification"]
    assert v["method"].startswith("fresh model") and v["within_budget"]
    assert float_metric - v["metric"] <= budget + 1e-12
    assert v["metric"] == pytest.approx(b["steps"][-1]["metric"], abs=1e-9)
    assert result["recommendation"]["source"] == "budget"
    # the written config reproduces the verified metric
    cfg = yaml.safe_load((tmp_path / "out" / "sensitivity_config.yaml").read_text())
    again = build_model()
    qdqtorch.quantize_model(again, cfg["quant"])
    load_calibration(again, tmp_path / "cal.json", strict=False)
    assert metric(again) == pytest.approx(v["metric"], abs=1e-9)
    # relative budget: 1% of the float metric
    rel = run_sensitivity(broken_toy(), toy_metric(), tmp_path / "rel", SweepSettings(budget="1%", chart=False),
                          progress=False)
    assert rel["budget"]["allowed"] == pytest.approx(0.01 * float_metric)
    assert rel["budget"]["verification"]["within_budget"]


def test_prefilter_sweeps_only_the_worst_by_proxy(tmp_path):
    calls = []
    result = run_sensitivity(broken_toy(), toy_metric(calls=calls), tmp_path, SweepSettings(prefilter=2,
                             chart=False), progress=False, proxy_data=calib_batches()[:1])
    assert len(calls) == 2 + 2
    assert len(result["entries"]) == 2 and len(result["not_evaluated"]) == 4
    assert result["entries"][0]["unit"] == BROKEN
    assert result["complete"]


def _snr_db(f, q):
    f, q = f.detach().double(), q.detach().double()
    return 10 * math.log10(float((f * f).sum() / ((q - f) ** 2).sum()))


@torch.no_grad()
def test_proxy_numbers_match_a_direct_computation():
    model = broken_toy()
    units = find_units(model)
    batch = calib_batches()[0]
    proxy = proxy_pass(model, [batch], units, progress=False)
    # reference for layer "2" alone: float input to layer 2, output with only its quantizers on vs all off
    with qdqtorch.disable_quantization(model):
        x2 = model[1](model[0](batch))
        f = model[2](x2)
        f_all = model(batch)
    layer = model[2]
    with qdqtorch.disable_quantization(model):
        with qdqtorch.enable_quantization(layer):
            q = layer(x2)
    row = proxy.single["layer:2"]
    assert row["snr_db"] == pytest.approx(_snr_db(f, q), rel=1e-6)
    assert row["mse"] == pytest.approx(float(((q.double() - f.double()) ** 2).mean()), rel=1e-6)
    cos = float(torch.nn.functional.cosine_similarity(f.double().flatten(), q.double().flatten(), dim=0))
    assert row["cosine"] == pytest.approx(cos, rel=1e-6)
    assert row["f_min"] == pytest.approx(float(f.min())) and row["q_max"] == pytest.approx(float(q.max()))
    # everything-quantized view of the last layer compares the whole model's outputs
    q_all = model(batch)
    assert proxy.all_quantized["8"]["snr_db"] == pytest.approx(_snr_db(f_all, q_all), rel=1e-6)
    assert proxy.ranking[0] == BROKEN
    assert all(q.is_enabled for _, q in qdqtorch.named_quantizers(model))  # states restored


@pytest.mark.parametrize("mode", ["disable-one", "enable-one"])
def test_prefix_reuse_gives_identical_results(tmp_path, mode):
    fast = run(tmp_path / "reuse", mode=mode)
    slow = run(tmp_path / "full", mode=mode, prefix_reuse=False)
    assert fast["timing"]["prefix_reuse"]["replayed_modules"] > 0
    assert slow["timing"]["prefix_reuse"] is None
    assert comparable(fast)["entries"] == comparable(slow)["entries"]
    assert comparable(fast)["baselines"] == comparable(slow)["baselines"]
    # resuming from a journal records the reference pass once, then replays
    resumed = run_sensitivity(broken_toy(), toy_metric(), tmp_path / "reuse", SweepSettings(mode=mode, chart=False,
                              budget="0.0"), progress=False)
    assert resumed["budget"]["steps"][-1]["metric"] == pytest.approx(resumed["budget"]["verification"]["metric"],
                                                                      abs=1e-12)


def test_prefix_reuse_with_a_cache_too_small_for_all_blocks(tmp_path):
    full = run(tmp_path / "full", prefix_reuse=False)
    with pytest.warns(UserWarning, match=r"caching \d+ of \d+"):
        small = run(tmp_path / "small", cache_mib=0.1)  # ~3 of the cacheable outputs fit
    stats = small["timing"]["prefix_reuse"]
    assert 0 < stats["cached_modules"] < 11 and stats["replayed_modules"] > 0 and stats["cache_mib"] <= 0.1
    assert comparable(small)["entries"] == comparable(full)["entries"]


def test_prefix_reuse_refuses_a_metric_with_changing_inputs(tmp_path):
    gen = torch.Generator().manual_seed(5)

    def drifting(model):
        return float(model(torch.randn(2, 3, 8, 8, generator=gen)).abs().mean())

    with pytest.raises(RuntimeError, match="same batches every time"):
        run_sensitivity(broken_toy(), Metric(drifting, "drift"), tmp_path, SweepSettings(chart=False),
                        progress=False)


def _recorded_cache(model):
    from qdqtorch.sensitivity.prefix_cache import PrefixCache
    cache = PrefixCache(model, "")
    with cache.recording("baseline"):
        metric(model)
    return cache


def test_prefix_reuse_replays_submodules_before_the_change_inside_a_block():
    model = quantized_toy()
    cache = _recorded_cache(model)
    # block 4 = conv 4.0, relu 4.1, conv 4.2: a change in 4.2 still replays 4.0/4.1 (not worth caching is the
    # last module of each block: nothing quantized runs after it inside its parent)
    assert {"4.0", "4.1"} <= set(cache.outputs) and "4.2" not in cache.outputs and "8" not in cache.outputs
    changed = {"4.2._input_quantizer", "4.2._weight_quantizer"}
    assert cache.safe_modules(changed) == ["0", "1", "2", "3", "4.0", "4.1"]
    assert cache.safe_modules({"4.0._input_quantizer"}) == ["0", "1", "2", "3"]
    # replaying gives exactly a full forward with the change applied
    quantizers = dict(qdqtorch.named_quantizers(model))
    for name in changed:
        quantizers[name].disable()
    expected = metric(model)
    with cache.replaying(cache.safe_modules(changed)):
        assert metric(model) == expected
    assert not cache.copy_on_replay


class _EditThenConv(torch.nn.Module):
    """A conv that first adds 1 to its input in place, from the moment `active` is set."""

    def __init__(self, active: bool) -> None:
        super().__init__()
        self.active = active
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x.add_(1) if self.active else x + 1)


def _editing_toy(active: bool):
    model = build_model()
    model[2] = _EditThenConv(active)  # edits block 1's output
    qdqtorch.quantize_model(model)
    qdqtorch.calibrate(model, calib_batches(), progress=False)
    return model


def test_prefix_reuse_copies_outputs_that_later_code_edits_in_place(tmp_path):
    cache = _recorded_cache(_editing_toy(True))
    assert "1" in cache.copy_on_replay and "0" not in cache.copy_on_replay
    fast, slow = run(tmp_path / "a", model=_editing_toy(True)), run(tmp_path / "b", model=_editing_toy(True),
                                                                     prefix_reuse=False)
    assert fast["timing"]["prefix_reuse"]["replayed_modules"] > 0
    assert comparable(fast)["entries"] == comparable(slow)["entries"]


def test_prefix_reuse_stops_when_a_shared_output_is_edited_after_recording():
    model = _editing_toy(False)
    cache = _recorded_cache(model)
    assert "1" in cache.outputs and not cache.copy_on_replay
    model[2].active = True  # from now on block 2 edits block 1's (shared, replayed) output
    changed = {"2.conv._input_quantizer"}
    dict(qdqtorch.named_quantizers(model))["2.conv._input_quantizer"].disable()
    expected = metric(model)
    with pytest.warns(UserWarning, match="modified in place"):
        with cache.replaying(cache.safe_modules(changed)):
            assert metric(model) == expected  # the job that saw the edit is still exact
    assert not cache.ready and cache.safe_modules(changed) == []
