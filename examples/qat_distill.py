#!/usr/bin/env python
"""Label-free QAT of a YOLO detector: distill the INT8 fake-quant model from its own float copy on a folder of
images, and report COCO mAP of float, PTQ (before) and QAT (after) on the same evaluation set.

    python examples/qat_distill.py --model ../shared/models/yolov5n.pt --repo PATH/TO/yolov5 \
        --images ../shared/data/coco128/images/train2017 --val-data ../shared/data/coco128/coco128.yaml \
        --epochs 10 --lr 1e-5 --imgsz 640 --batch 16 --device cuda

Starts from the shipped placement `--rules tensorrt-int8-residual` (every residual Add fused into its Conv), so QAT
recovers what full fusion costs in PTQ. PTQ and QAT are also judged by fidelity (agreement with the float model's
own detections, no labels needed); `--jitter-draws 5` says how finely those figures resolve the two models
(BENCHMARKS.md §8l). Writes OUT/qat.safetensors after every epoch, so Ctrl-C keeps the last finished one (reload it
with qdqtorch.qat.load_qat_checkpoint into a model quantized the same way, same --rules), and OUT/summary.json.
Loading a .pt checkpoint unpickles it, which can run code: only load files you trust. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from qdqtorch.errors import QdqtorchError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint (.pt pickle: YOLOv5/YOLOv7 repo or Ultralytics)")
    p.add_argument("--repo", help="training repository the pickle was saved from (put on the import path)")
    p.add_argument("--images", required=True, help="unlabelled training images: folder, list file or dataset yaml "
                                                   "(train split); also used for calibration")
    p.add_argument("--val-data", required=True, help="evaluation set: Ultralytics dataset yaml (val split) or image "
                                                     "folder with YOLO labels")
    p.add_argument("--epochs", type=int, default=5, help="passes over --images (default 5)")
    p.add_argument("--lr", type=float, default=1e-5, help="learning rate of the weights (default 1e-5)")
    p.add_argument("--amax-lr", type=float, default=None, help="learning rate of learned amax (default --lr x 100)")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam", help="default adam; sgd uses momentum 0.9")
    p.add_argument("--imgsz", type=int, default=640, help="letterbox size (default 640)")
    p.add_argument("--batch", type=int, default=16, help="batch size (default 16)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda, cuda:1 ... (default cuda when available)")
    p.add_argument("--num-images", type=int, default=None, help="use at most this many training images")
    p.add_argument("--num-calib", type=int, default=128, help="calibration images (default 128)")
    p.add_argument("--calib-method", choices=["max", "entropy", "mse", "percentile"], default="max",
                   help="activation amax method for the PTQ starting point (default max)")
    p.add_argument("--grid", choices=["symmetric", "shifted"], default="symmetric",
                   help="activation grid of the calibration QAT starts from (shifted: BENCHMARKS.md §8e)")
    p.add_argument("--num-eval", type=int, default=None, help="evaluate on at most this many images")
    p.add_argument("--learn-amax", nargs="*", metavar="REGEX", default=None,
                   help="learn amax: alone for every quantizer, or followed by regexes of quantizer names")
    p.add_argument("--train-bn-stats", action="store_true",
                   help="let BatchNorm update its statistics (default: frozen, as usual for QAT fine-tuning)")
    p.add_argument("--blocks", nargs="*", metavar="REGEX", default=None,
                   help="modules whose outputs are distilled (default: the model's main blocks but the head)")
    p.add_argument("--block-weight", type=float, default=1.0, help="weight of the per-block MSE (default 1)")
    p.add_argument("--output-weight", type=float, default=1.0, help="weight of the final-output MSE (default 1)")
    p.add_argument("--rules", default="tensorrt-int8-residual",
                   help="Q/DQ placement to start from (default tensorrt-int8-residual: every Conv+Add fused, the "
                        "fastest TensorRT engine, whose PTQ accuracy loss QAT recovers); 'none' for plain placement")
    p.add_argument("--ignore", nargs="+", default=[], metavar="REGEX", help="layers kept float (re.match)")
    p.add_argument("--out", default="runs/qat", help="output folder (default runs/qat)")
    p.add_argument("--workers", type=int, default=0, help="image loading workers (default 0)")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    p.add_argument("--skip-float-eval", action="store_true", help="skip the float baseline")
    p.add_argument("--jitter-draws", type=int, default=0, metavar="N",
                   help="rescore PTQ and QAT in N copies whose biases moved by one float32 ulp: the spread is how "
                        "finely their figures resolve the models (gaps below about 2 sd are ties; default 0: off)")
    args = p.parse_args(argv)
    if args.jitter_draws < 0:
        p.error(f"--jitter-draws must be 0 (off) or more, got {args.jitter_draws}")
    return args


def _eval_set(path: str, preprocess, names, num_images, workers):
    from qdqtorch.eval import EvalSet
    data = Path(path)
    if not data.exists():
        raise FileNotFoundError(f"--val-data {path} not found: pass a local dataset yaml or image folder with YOLO "
                                "labels")
    if data.suffix in (".yaml", ".yml"):
        return EvalSet.from_yaml(data, "val", preprocess, num_images=num_images, workers=workers)
    return EvalSet.from_yolo(data, preprocess, names=names, num_images=num_images, workers=workers)


def run(args: argparse.Namespace) -> dict:
    """Float eval, quantize + calibrate, PTQ eval, distillation epochs, QAT eval, checkpoint; returns the summary."""
    from qdqtorch import QuantConfig, calibrate, quantize_model
    from qdqtorch.atomic import atomic_write_text
    from qdqtorch.data import Preprocess, calibration_loader
    from qdqtorch.eval import evaluate, jitter
    from qdqtorch.eval.fidelity import fidelity, float_reference
    from qdqtorch.models import load_model
    from qdqtorch.qat import DistillationLoss, make_teacher, param_groups, prepare_qat, save_qat_checkpoint
    from qdqtorch.rules import apply_placement, placement_from_name

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    loaded = load_model(args.model, repo=args.repo, device=args.device)
    model, layout = loaded.model, loaded.layout
    preprocess = Preprocess(imgsz=args.imgsz, stride=loaded.stride)
    eval_set = _eval_set(args.val_data, preprocess, loaded.names, args.num_eval, args.workers)
    eval_kwargs = dict(layout=layout, batch_size=args.batch)
    summary: dict = {"settings": vars(args), "model": loaded.source, "eval_images": len(eval_set), "rules": args.rules}

    if not args.skip_float_eval:
        summary["float"] = evaluate(model, eval_set, **eval_kwargs).to_dict()
        print(f"float: mAP50-95 {summary['float']['map50_95']:.4f}")
    # the float model's own detections: fidelity (label-free agreement with float) of PTQ and QAT is scored on them
    reference = float_reference(model, eval_set, layout=layout, batch_size=args.batch)

    def both(candidate: torch.nn.Module) -> tuple:
        return (evaluate(candidate, eval_set, **eval_kwargs),
                fidelity(candidate, reference, batch_size=args.batch, outputs=False))

    def figures(candidate: torch.nn.Module) -> dict:
        result, agreement = both(candidate)
        return {"map50_95": result.map50_95, "fidelity": agreement.map50_95}

    def score(key: str) -> None:
        result, agreement = both(model)
        summary[key] = result.to_dict()
        summary[key]["fidelity"] = {"map50_95": agreement.map50_95, "map50": agreement.map50}
        print(f"{key.upper()}: mAP50-95 {summary[key]['map50_95']:.4f}, fidelity mAP50-95 {agreement.map50_95:.4f}")
        if args.jitter_draws:
            found = jitter(model, figures, args.jitter_draws, progress=True,
                           unperturbed={"map50_95": summary[key]["map50_95"], "fidelity": agreement.map50_95})
            summary.setdefault("jitter", {})[key] = found.to_dict()
            print(f"{key.upper()}: {found}")

    config = QuantConfig(ignore=list(dict.fromkeys([*loaded.default_ignore, *args.ignore])))
    quantize_model(model, config)
    apply_placement(model, placement_from_name(args.rules), next(eval_set.batches(1, args.device))[1])
    calib = calibration_loader(args.images, preprocess, batch_size=args.batch, num_images=args.num_calib,
                               workers=args.workers)
    calibrate(model, calib, method=args.calib_method, device=args.device, grid=args.grid)
    score("ptq")

    teacher = make_teacher(model)
    learn = False if args.learn_amax is None else (args.learn_amax or True)
    report = prepare_qat(model, freeze_bn=not args.train_bn_stats, learn_amax=learn)
    print(report)
    loss_fn = DistillationLoss(model, teacher, blocks="auto" if args.blocks is None else (args.blocks or None),
                               block_weight=args.block_weight, output_weight=args.output_weight)
    groups = param_groups(model, args.lr, amax_lr=args.amax_lr if args.amax_lr is not None else args.lr * 100)
    optimizer = (torch.optim.Adam(groups) if args.optimizer == "adam"
                 else torch.optim.SGD(groups, momentum=0.9))
    train = calibration_loader(args.images, preprocess, batch_size=args.batch, num_images=args.num_images,
                               workers=args.workers, shuffle=True, seed=args.seed)
    history: list = []
    checkpoint = out / "qat.safetensors"
    saved = {"quant_config": config.to_dict(), "rules": args.rules}
    t0 = time.perf_counter()
    try:
        for epoch in range(args.epochs):
            train.seed = args.seed + epoch  # a new order every epoch
            total, seen = 0.0, 0
            bar = tqdm(train, desc=f"QAT epoch {epoch + 1}/{args.epochs}", unit="batch")
            for images in bar:
                images = images.to(args.device, non_blocking=True)
                loss = loss_fn(images)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, seen = total + loss_fn.last["loss"] * len(images), seen + len(images)
                bar.set_postfix(loss=f"{loss_fn.last['loss']:.4g}", blocks=f"{loss_fn.last['blocks']:.3g}",
                                output=f"{loss_fn.last['output']:.3g}")
            history.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1)})
            save_qat_checkpoint(model, checkpoint, metadata={"epochs": epoch + 1, **saved})  # Ctrl-C keeps it
    except KeyboardInterrupt:
        summary.update(train_seconds=time.perf_counter() - t0, history=history, interrupted_in_epoch=len(history) + 1)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
        held = (f"{checkpoint} holds the model after epoch {len(history)}" if history
                else f"no epoch finished, so nothing was saved (a {checkpoint.name} there is from an earlier run)")
        print(f"\ninterrupted in epoch {len(history) + 1}: {held}; {out / 'summary.json'} has the PTQ figures and "
              "the loss history", file=sys.stderr)
        raise
    summary["train_seconds"] = time.perf_counter() - t0
    summary["history"] = history
    score("qat")

    if "float" in summary:
        gap = summary["float"]["map50_95"] - summary["ptq"]["map50_95"]
        gained = summary["qat"]["map50_95"] - summary["ptq"]["map50_95"]
        summary["gap_recovered"] = gained / gap if gap > 0 else None
    save_qat_checkpoint(model, checkpoint, metadata={"epochs": args.epochs, "map50_95": summary["qat"]["map50_95"],
                                                     **saved})
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    return summary


def _table(summary: dict) -> str:
    from qdqtorch.eval.jitter import spread_text
    rows = [(name, summary[key]) for name, key in (("float", "float"), ("PTQ", "ptq"), ("QAT", "qat"))
            if key in summary]
    lines = ["model   mAP50-95  mAP50   fidelity mAP50-95", "-----   --------  ------  -----------------"]
    lines += [f"{name:<7} {r['map50_95']:.4f}    {r['map50']:.4f}  " +
              (f"{r['fidelity']['map50_95']:.4f}" if "fidelity" in r else "1 (reference)") for name, r in rows]
    for key, name in (("ptq", "PTQ"), ("qat", "QAT")):
        if key in summary.get("jitter", {}):
            s = summary["jitter"][key]["figures"]["fidelity"]
            lines.append(f"{name} fidelity, the model and {s['n'] - 1} one-ulp copies: {spread_text(s)}; gaps below "
                         "about 2 sd are ties")
    if summary.get("gap_recovered") is not None:
        lines.append(f"QAT recovered {100 * summary['gap_recovered']:.0f}% of the PTQ gap to float")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = run(args)
    except (QdqtorchError, FileNotFoundError) as exc:  # bad input: one line; anything else is a bug (traceback)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(_table(summary))
    print(f"wrote {Path(args.out) / 'qat.safetensors'} and summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
