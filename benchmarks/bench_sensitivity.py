"""Per-layer disable-one sweep of YOLOv5n: qdqtorch.sensitivity versus a seed-style loop, in one run.

Both sides start from the same calibrated quantized model (calibrated once, not timed in either) and evaluate the
same units on the same images:
- qdqtorch: `run_sensitivity` (images decoded and letterboxed once, batched inference and NMS, fast COCO scorer
  overlapped with the next unit's inference, quantizers toggled in place, every result journaled);
- naive: per unit, reload and preprocess the evaluation images from disk (a new EvalSet), disable the layer's
  quantizers, run inference, NMS one image at a time, score with pycocotools from scratch, rewrite the results JSON
  (the recipe of the YOLOv7 PTQ course / yolo_deepstream scripts).
The naive loop may be limited to the first --naive-units units; its per-unit time is then extrapolated to all units
and the report says so. `run_sensitivity` keeps freed host memory for reuse (`qdqtorch.reuse_freed_memory`); the
naive loop runs under the same allocator setting by default, so the ratio measures the sweep's design, not the
allocator (`--naive-allocator default` times it as the seed scripts run, `both` times both). Both sides' metrics
are compared unit by unit (the two COCO scorers agree to 1e-4).

    python benchmarks/bench_sensitivity.py --imgsz 320 --num-images 32 --threads 1
    python benchmarks/bench_sensitivity.py --device cuda          # 128 images at 640 on a GPU
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qdqtorch  # noqa: E402
from _common import machine  # noqa: E402
from qdqtorch.pipeline import PTQSettings  # noqa: E402
from qdqtorch.sensitivity import SweepSettings, find_units, run_sensitivity  # noqa: E402
from qdqtorch.sensitivity.session import build_session  # noqa: E402

SHARED = ROOT.parent / "shared"


def naive_evaluate(model, eval_set, layout: str, batch: int) -> float:
    """Seed-style evaluation: batched inference, NMS one image at a time, pycocotools from scratch."""
    import numpy as np
    from qdqtorch.eval import Detections, non_max_suppression
    from qdqtorch.eval.scoring import PycocotoolsScorer

    lut = torch.tensor(eval_set.category_ids)
    parts = []
    with torch.no_grad():
        for start, x in eval_set.batches(batch, next(model.parameters()).device):
            pred = model(x)
            pred = pred[0] if isinstance(pred, (tuple, list)) else pred
            for k in range(pred.shape[0]):  # per-image NMS loop
                det = non_max_suppression(pred[k:k + 1], layout)[0].cpu()
                xyxy = eval_set.infos[start + k].to_original(det[:, :4].double())
                xywh = torch.cat((xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]), 1)
                parts.append(Detections(np.full(len(det), eval_set.image_ids[start + k]),
                                        lut[det[:, 5].long()].numpy(), xywh.numpy(), det[:, 4].double().numpy()))
    return PycocotoolsScorer(eval_set.gt, eval_set.image_ids).score(Detections.concat(parts)).map50_95


def naive_sweep(model, units, settings: PTQSettings, layout: str, out: Path, limit: int) -> tuple:
    """Per unit: fresh EvalSet from disk (decode + letterbox), in-place disable, seed-style evaluation, rewrite the
    results JSON."""
    from qdqtorch.data import Preprocess
    from qdqtorch.eval import EvalSet

    results, times = {}, []
    quantizers = dict(qdqtorch.named_quantizers(model))
    model.eval()
    for unit in units[:limit]:
        start = time.perf_counter()
        pp = Preprocess(imgsz=settings.imgsz, stride=32)
        eval_set = EvalSet.from_yaml(settings.data, "val", pp, num_images=settings.num_eval, progress=False)
        for name in unit.quantizers:
            quantizers[name].disable()
        try:
            results[unit.name] = naive_evaluate(model, eval_set, layout, settings.batch)
        finally:
            for name in unit.quantizers:
                quantizers[name].enable()
        (out / "naive_sensitivity.json").write_text(json.dumps(results, indent=1))
        times.append(time.perf_counter() - start)
        print(f"  naive {len(times)}/{limit}: {unit.name} {results[unit.name]:.4f} ({times[-1]:.2f}s)", flush=True)
    return results, times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(SHARED / "models" / "yolov5n.pt"))
    p.add_argument("--repo", default=str(ROOT / "tests" / "fixtures" / "yolov5_repo"))
    p.add_argument("--data", default=str(SHARED / "data" / "coco128" / "coco128.yaml"))
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--num-images", type=int, default=128)
    p.add_argument("--num-calib", type=int, default=32)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--naive-units", type=int, help="time the naive loop on the first N units only (default all)")
    p.add_argument("--naive-allocator", choices=["reuse", "default", "both"], default="reuse",
                   help="host allocator setting of the naive loop (default: reuse, the same as the sweep)")
    p.add_argument("--cache-mib", type=float, help="prefix-reuse memory limit of the sweep (default: the library's)")
    p.add_argument("--json", help="write the measurements here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    where = machine(args.device)
    settings = PTQSettings(model=args.model, repo=args.repo, data=args.data, imgsz=args.imgsz,
                           num_eval=args.num_images, num_calib=args.num_calib, batch=args.batch, device=args.device,
                           scorer="fast", export=False, rules=None)  # the §4 sweep: plain replacement
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        session = build_session(settings, out / "setup", proxy_images=0, progress=False)
        setup_s = time.perf_counter() - t0
        units = find_units(session.model)
        t0 = time.perf_counter()
        result = run_sensitivity(session.model, session.metric, out / "fast",
                                 SweepSettings(chart=False, cache_mib=args.cache_mib), progress=True)
        fast_s = time.perf_counter() - t0
        evaluations = len(units) + 2
        limit = min(args.naive_units or len(units), len(units))
        naive_runs = {}
        for allocator in (["reuse", "default"] if args.naive_allocator == "both" else [args.naive_allocator]):
            with qdqtorch.reuse_freed_memory(enabled=allocator == "reuse"):
                naive_runs[allocator] = naive_sweep(session.model, units, settings, session.metric.layout, out,
                                                    limit)
    fast_metrics = {e["unit"]: e["metric"] for e in result["entries"]}
    diff = max(abs(fast_metrics[n] - v) for naive, _ in naive_runs.values() for n, v in naive.items())
    naive_rows = {}
    for allocator, (_, times) in naive_runs.items():
        per_naive = sum(times) / len(times)
        naive_total = per_naive * (len(units) + 2)  # + the two baselines, evaluated the same way
        naive_rows[allocator] = {
            "naive_per_eval_s": round(per_naive, 3),
            "naive_sweep_s" + (" (extrapolated)" if limit < len(units) else ""): round(naive_total, 2),
            "speedup": round(naive_total / fast_s, 2)}
    report = {
        "machine": where, "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "images": args.num_images, "imgsz": args.imgsz, "batch": args.batch, "units": len(units),
        "setup_s (load, cache images, calibrate once)": round(setup_s, 2),
        "qdqtorch_sweep_s": round(fast_s, 2), "qdqtorch_per_eval_s": round(fast_s / evaluations, 3),
        "prefix_reuse": result["timing"]["prefix_reuse"],
        "naive_units_timed": limit, "naive (by allocator setting)": naive_rows, "max_metric_difference": diff,
        "peak_rss_mib (process)": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "baselines": {k: v["metric"] for k, v in result["baselines"].items()},
        "top5": [(e["unit"], round(e["impact"], 4)) for e in result["entries"][:5]],
    }
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
