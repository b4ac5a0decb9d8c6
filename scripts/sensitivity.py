#!/usr/bin/env python
"""Quantization sensitivity: which layers cost the most accuracy as INT8, and which few to keep float.

Quantizes and calibrates the model as scripts/ptq.py does, then evaluates it once per layer with only that layer's
quantizers switched off (disable-one; --mode enable-one does the opposite), ranks the layers by the mAP they cost, and,
with --budget, picks the fewest layers to keep float so that INT8 stays within the budget of float. CPU is enough.
Without labels (or when the model's classes are not the dataset's) the metric is fidelity, the agreement with the
float model's own detections (--metric fidelity asks for it); only impacts above the metric's noise (a bootstrap over
the images, printed) are recommended.

examples:
  python scripts/sensitivity.py --out runs/sens_demo
      the embedded demo (no --model/--data), as scripts/ptq.py: about 15 s on 2 CPU cores
  python scripts/sensitivity.py --model ../shared/models/yolov5n.pt --repo tests/fixtures/yolov5_repo \\
      --data ../shared/data/coco128/coco128.yaml --imgsz 320 --num-eval 64 --budget 0.003 --out runs/sens
  python scripts/sensitivity.py --model my_custom_classes.pt --data my_unlabelled_images/ --metric fidelity
  torchrun --nproc-per-node 4 scripts/sensitivity.py ...          (units split across ranks, rank 0 writes)
  python scripts/sensitivity.py ... --shard 0/8   then   python scripts/sensitivity.py merge DIR [DIR ...] --out DIR

Writes sensitivity.json (schema: qdqtorch.sensitivity.schema), sensitivity.md (the ranking), sensitivity.png (the
chart), sensitivity_proxy.md and sensitivity_config.yaml (the ignore-list, for `scripts/ptq.py --config`). Every
evaluation is journaled: rerunning the same command resumes (Ctrl-C is safe); a second sweep into the same --out
is refused while the first runs. Model/data/calibration options and their defaults (placement rules tensorrt, scorer
fast) are those of scripts/ptq.py (and --config takes its settings files). Loading a .pt checkpoint unpickles it:
only load files you trust.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

S = argparse.SUPPRESS  # options left out keep the --config file's value (or the default)
DEMO_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo"
DEMO = {"model": str(DEMO_DIR / "shapes_detector.safetensors"), "data": str(DEMO_DIR / "shapes.yaml"),
        "num_calib": 32}


def run_parser() -> argparse.ArgumentParser:
    from qdqtorch.calib import AMAX_METHODS, WEIGHT_METHODS
    from qdqtorch.nn import GRIDS
    from qdqtorch.rules import PLACEMENTS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model, data and calibration (as scripts/ptq.py)")
    g.add_argument("--config", help="PTQ settings YAML/JSON (any option of scripts/ptq.py plus a `quant:` section)")
    g.add_argument("--model", default=S, help="checkpoint .pt, model yaml, or 'module:function' returning a float "
                                             "nn.Module")
    g.add_argument("--repo", default=S, help="training repository the pickle was saved from")
    g.add_argument("--data", default=S, help="dataset yaml or image folder with YOLO labels (evaluation)")
    g.add_argument("--calib-data", default=S, help="calibration source (default: --data's train split) or "
                                                  "'module:function' yielding input batches")
    g.add_argument("--num-calib", type=int, default=S, help="calibration images (default 128)")
    g.add_argument("--num-eval", "--num-images", dest="num_eval", type=int, default=S,
                   help="evaluation images (default all; --num-images is the old name)")
    g.add_argument("--imgsz", type=int, default=S, help="letterbox size (default: the size the checkpoint records, "
                                                        "else 640)")
    g.add_argument("--batch", type=int, default=S, help="batch size (default 16)")
    g.add_argument("--calib-method", choices=AMAX_METHODS, default=S)
    g.add_argument("--percentile", type=float, default=S)
    g.add_argument("--grid", choices=GRIDS, default=S,
                   help="activation grid: symmetric (default) or shifted (zero point for one-sided tensors, folded "
                        "away in the export; BENCHMARKS.md §8e)")
    g.add_argument("--weight-method", choices=WEIGHT_METHODS, default=S)
    g.add_argument("--ignore", nargs="+", default=S, metavar="REGEX", help="layers kept float throughout")
    g.add_argument("--rules", choices=PLACEMENTS, default=S,
                   help="TensorRT Q/DQ placement rules: tensorrt (the default, what one ships: residual shortcuts "
                        "float), tensorrt-int8-residual (shortcuts int8 so TensorRT fuses Conv+Add; -0.010 mAP50-95 "
                        "on YOLOv5n), or none (plain replacement)")
    g.add_argument("--fold-bn", action="store_true", default=S)
    g.add_argument("--no-fuse-reparam", dest="fuse_reparam", action="store_false", default=S,
                   help="keep RepConv blocks in their training form (default: fused, as deployed)")
    g.add_argument("--device", default=S, help="cpu, cuda, cuda:1 ... (default cpu; cuda:LOCAL_RANK under torchrun)")
    g.add_argument("--scorer", choices=["pycocotools", "fast"], default=S,
                   help="COCO scorer (default fast: the same numbers as pycocotools, faster)")
    g.add_argument("--workers", type=int, default=S)
    g.add_argument("--allow-empty", action="store_true", default=S,
                   help="go on when the float model detects nothing on the evaluation images (an error otherwise)")
    g.add_argument("--calibration", help="load this calibration file (from save_calibration) instead of calibrating")
    g.add_argument("--calib-distributed", action="store_true",
                   help="under torchrun, every rank calibrates on its share of the images and statistics are "
                        "all-reduced (default: rank 0 calibrates and broadcasts amax)")
    s = p.add_argument_group("sweep")
    s.add_argument("--out", default="runs/sensitivity", help="output folder (default runs/sensitivity)")
    s.add_argument("--metric", default="map50_95",
                   help="map50_95 (default: COCO mAP against the labels), map50, fidelity (agreement with the float "
                        "model's own detections, mAP50-95; no labels needed), fidelity_map50, or 'module:function' "
                        "taking the model and returning a float. COCO mAP switches to fidelity by itself when the "
                        "images have no labels or the model's classes are not the dataset's")
    s.add_argument("--lower-is-better", action="store_true", help="for a custom metric such as a loss")
    s.add_argument("--mode", choices=["disable-one", "enable-one"], default="disable-one")
    s.add_argument("--unit", choices=["quantizer", "layer", "block"], default="layer")
    s.add_argument("--block-depth", type=int, help="module-path prefix depth of a block (default: auto, model.{i})")
    s.add_argument("--reference", choices=["quantized", "float"], help="baseline of `delta` (default: quantized "
                                                                        "for disable-one, float for enable-one)")
    s.add_argument("--topk", type=int, default=20, help="rows in sensitivity.md (default 20)")
    s.add_argument("--recommend", type=int, default=3, help="units to recommend without --budget (default 3)")
    s.add_argument("--proxy-images", type=int, default=8, help="images for the proxy pass (0: skip; default 8)")
    s.add_argument("--prefilter", type=int, help="sweep only the K most sensitive units by proxy")
    s.add_argument("--budget", help="allowed drop against float: absolute (0.003) or relative (1%%)")
    s.add_argument("--budget-max-units", type=int, default=10, help="at most this many float units (default 10)")
    s.add_argument("--budget-candidates", type=int, default=1, help="units tried per greedy step, best kept "
                   "(default 1: walk the ranking; 3-5 copes better with interacting layers)")
    s.add_argument("--shard", help="K/N: evaluate only shard K (0-based) of N; combine with `merge`")
    s.add_argument("--fresh", action="store_true", help="discard journals in --out instead of resuming")
    s.add_argument("--no-overlap", action="store_true", help="do not score on a thread during the next inference")
    s.add_argument("--no-prefix-reuse", action="store_true", help="recompute every block for every unit instead of "
                   "replaying the unchanged blocks' outputs from the reference pass")
    s.add_argument("--cache-mib", type=float, help="memory for prefix reuse in MiB (default: a quarter of the free "
                   "RAM, half the free GPU memory)")
    s.add_argument("--no-chart", action="store_true", help="skip sensitivity.png")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.add_argument("--debug", action="store_true", default=S, help="print the full traceback of an error")
    return p


def merge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sensitivity.py merge", description="Combine shard outputs (folders or journal "
                                "files) into one sensitivity.json/.md/.png")
    p.add_argument("inputs", nargs="+", help="shard output folders or journal*.jsonl files")
    p.add_argument("--out", required=True, help="folder for the merged outputs")
    p.add_argument("--topk", type=int, default=20)
    p.add_argument("--recommend", type=int, default=3)
    p.add_argument("--no-chart", action="store_true")
    return p


def _summary(result: dict) -> str:
    base = result["baselines"]
    noise = result.get("noise")
    lines = [f"metric {result['settings'].get('metric')}: "
             f"float {base.get('float', {}).get('metric', float('nan')):.4f}, all quantized "
             f"{base.get('quantized', {}).get('metric', float('nan')):.4f}; noise (bootstrap std over "
             f"the images) {'unknown' if noise is None else format(noise['std'], '.4f')}; most sensitive:"]
    lines += [f"  {e['rank']:>3}. {e['unit']:<40} impact {e['impact']:+.4f}"
              + ("" if e.get("significant") is None else "" if e["significant"] else "  (within the noise)")
              for e in result["entries"][:5] if e["impact"] is not None]
    rec = result.get("recommendation", {})
    if rec.get("note"):
        lines.append(f"recommendation: {rec['note']}")
    elif "budget" not in result:
        lines.append(f"recommendation: keep float {rec.get('units', [])}")
    meaning = result.get("proxy", {}).get("rank_correlation", {}).get("meaning") if result.get("proxy") else None
    if meaning:
        lines.append(f"proxy: {meaning}")
    if "budget" in result:
        v = result["budget"]["verification"]
        lines.append(f"budget: keep {result['budget']['selected']} float -> {v['metric']:.4f} (gap {v['gap']:+.4f}, "
                     f"{'within' if v['within_budget'] else 'NOT within'} budget)")
    if result.get("output_dir"):
        lines.append(f"wrote {result['output_dir']}/sensitivity.json, .md, .png, sensitivity_config.yaml")
    return "\n".join(lines)


def merge_main(argv) -> int:
    from qdqtorch.sensitivity import merge_outputs
    args = merge_parser().parse_args(argv)
    result = merge_outputs(args.inputs, args.out, topk=args.topk, recommend=args.recommend, chart=not args.no_chart)
    if result["missing"]:
        print(f"warning: {len(result['missing'])} unit(s) have no result (a shard missing?): "
              f"{result['missing'][:5]}", file=sys.stderr)
    print(_summary(result))
    return 0


def settings_from_args(args: dict):
    """The sweep's SensitivitySettings from the parsed options: the PTQ options (and --config) fill its PTQSettings,
    the others its SweepSettings and session fields. Call after the process group is up (the device may follow
    LOCAL_RANK)."""
    import os

    import torch
    from qdqtorch.errors import UsageError
    from qdqtorch.ptq import PTQSettings
    from qdqtorch.sensitivity import SweepSettings, parse_shard
    from qdqtorch.sensitivity import distributed as D
    from qdqtorch.sensitivity.session import SensitivitySettings

    args = dict(args)
    config = args.pop("config", None)
    ptq_fields = set(PTQSettings.__dataclass_fields__) - {"out"}  # --out is the sweep's folder
    ptq_args = {k: args.pop(k) for k in list(args) if k in ptq_fields}
    if D.rank_and_world()[1] > 1 and "device" not in ptq_args and torch.cuda.is_available():
        ptq_args["device"] = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    if config is None and "model" not in ptq_args and "data" not in ptq_args:
        print(f"no --model/--data given: sweeping the embedded demo ({DEMO_DIR})", file=sys.stderr)
        ptq_args = {**DEMO, **ptq_args}
    ptq = PTQSettings.from_file(config, **ptq_args) if config else PTQSettings.from_dict(ptq_args)
    if not ptq.model:
        raise UsageError("--model is required (or a --config file naming it); with neither --model nor --data "
                         "the embedded demo runs")
    sweep = SweepSettings(
        mode=args["mode"], unit=args["unit"], block_depth=args["block_depth"], reference=args["reference"],
        topk=args["topk"], prefilter=args["prefilter"], budget=args["budget"],
        budget_max_units=args["budget_max_units"], budget_candidates=args["budget_candidates"],
        recommend=args["recommend"], shard=parse_shard(args["shard"]) if args["shard"] else None,
        overlap=not args["no_overlap"], prefix_reuse=not args["no_prefix_reuse"], cache_mib=args["cache_mib"],
        chart=not args["no_chart"])
    return SensitivitySettings(ptq, sweep, out=args["out"], metric=args["metric"],
                               higher_is_better=not args["lower_is_better"], proxy_images=args["proxy_images"],
                               calibration=args["calibration"], calib_distributed=args["calib_distributed"],
                               fresh=args["fresh"], progress=not args["quiet"])


def run_main(argv) -> int:
    from qdqtorch.sensitivity import distributed as D
    from qdqtorch.sensitivity.session import run_session

    args = vars(run_parser().parse_args(argv))
    owned = D.init_from_env()
    try:
        settings = settings_from_args(args)
        result = run_session(settings)
    finally:
        if owned:
            D.shutdown()
    if result is not None:
        shard = settings.sweep.shard
        if shard is not None and shard[1] > 1:
            print(f"shard {args['shard']} done ({len(result['entries'])} unit result(s) here); combine all shards "
                  f"with: {Path(sys.argv[0]).name} merge {settings.out} [other shard folders] --out MERGED")
        else:
            print(_summary(result))
    return 0


def main(argv=None) -> int:
    from qdqtorch.pipeline.cli import pop_debug, run_cli
    argv, debug = pop_debug(argv)
    if argv and argv[0] == "merge":
        return run_cli(lambda: merge_main(argv[1:]), debug=debug)
    return run_cli(lambda: run_main(argv[1:] if argv and argv[0] == "run" else argv), debug=debug,
                   interrupted="every finished evaluation is saved in the journal; rerun the same command to resume")


if __name__ == "__main__":
    sys.exit(main())
