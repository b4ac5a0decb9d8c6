#!/usr/bin/env python
"""Fidelity and COCO mAP of the distillation recovery after every epoch, per shuffling seed: how much a single
figure depends on the step where the run stops, and the level the recipe holds once past its first epochs.

    python benchmarks/distill_trajectory.py --rules tensorrt --seeds 0 1 --out runs/distill_trajectory

Reference protocol (calibrate on 128 coco128 train images, mse, shifted grid; 128 val images at 640); the
distillation runs on the calibration images with `fine_tune`'s defaults (constant lr, so its first 8 epochs are
exactly the default 8-epoch recovery of the same seed) and is scored in fake quant after each epoch through
`fine_tune(on_epoch=...)`, fidelity and COCO mAP from one inference pass. `--calib-fidelity` also scores fidelity
on the calibration images themselves, the ones the distillation trains on: whether the run fits its own data.
Writes results.json, a markdown table and trajectory.png (with matplotlib installed).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import add_int8_args, add_protocol_args, int8_setup, machine  # noqa: E402
from _weight_flips import WeightFlips  # noqa: E402

from qdqtorch.eval.jitter import spread  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_args(p)
    add_int8_args(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--learn-amax", action="store_true", help="learn every quantizer's amax too (fine_tune)")
    p.add_argument("--lr", type=float, default=1e-5, help="fine_tune's weight learning rate")
    p.add_argument("--block-weight", type=float, default=1.0, help="fine_tune's weight of the per-block MSE terms "
                   "(0: final-output MSE only)")
    p.add_argument("--track-flips", action="store_true", help="count the integer weights that change in each "
                   "epoch, and those that go back to their previous value (oscillation)")
    p.add_argument("--pull-to-grid", type=float, default=0.0, help="after each step move every weight this "
                   "fraction of the way to the centre of its rounding bin (damps oscillation; implies --track-flips)")
    p.add_argument("--calib-fidelity", action="store_true", help="also score fidelity on the calibration images "
                   "(the distillation's training data) after every epoch")
    p.add_argument("--settled", type=int, default=4, help="epochs from this one on make up the 'settled' summary")
    p.add_argument("--out", default="runs/distill_trajectory")
    args = p.parse_args(argv)
    if args.lr <= 0 or args.block_weight < 0:
        p.error(f"--lr must be > 0 and --block-weight >= 0, got {args.lr} and {args.block_weight}")
    if not 0 <= args.pull_to_grid <= 1:
        p.error(f"--pull-to-grid {args.pull_to_grid} must be between 0 (off) and 1 (integers fixed)")
    if not 0 <= args.settled <= args.epochs:
        p.error(f"--settled {args.settled} must be between 0 and --epochs {args.epochs}")
    return args


def run(args: argparse.Namespace) -> dict:
    from qdqtorch.eval import EvalSet
    from qdqtorch.eval.fidelity import fidelity, float_reference
    from qdqtorch.qat import fine_tune

    setup = int8_setup(args)
    loaded, model = setup.loaded, setup.model
    calib_reference = None
    if args.calib_fidelity:   # setup.calib's images: the first num_calib of the yaml's train split
        calib_set = EvalSet.from_yaml(args.data, "train", setup.preprocess, num_images=args.num_calib,
                                      progress=False)
        calib_reference = float_reference(loaded.model, calib_set, layout=loaded.layout, output_images=0)

    def score(candidate) -> dict:
        extra = ({} if calib_reference is None else
                 {"calib_fidelity": fidelity(candidate, calib_reference, outputs=False).map50_95})
        return {**setup.score(candidate), **extra}

    start = score(model)
    print({"epoch": 0, **start}, flush=True)
    track = args.track_flips or args.pull_to_grid > 0
    if track:
        start.update(changed=0, reverted=0)
    runs = {}
    for seed in args.seeds:
        rows = [{"epoch": 0, **start}]
        student = copy.deepcopy(model)
        flips = WeightFlips(student, pull=args.pull_to_grid) if track else None

        def after_epoch(epoch: int, candidate, rows=rows, seed=seed, flips=flips) -> None:
            rows.append({"epoch": epoch, **score(candidate), **(flips.epoch_totals(epoch) if flips else {})})
            print({"seed": seed, **rows[-1]}, flush=True)

        with flips or contextlib.nullcontext():
            report = fine_tune(student, setup.calib,
                               num_images=args.num_calib, epochs=args.epochs, seed=seed, learn_amax=args.learn_amax,
                               lr=args.lr, block_weight=args.block_weight, on_epoch=after_epoch, progress=False)
        print(report, flush=True)
        runs[str(seed)] = {"rows": rows, "epoch_losses": report.epoch_losses, "seconds": report.seconds}
        if flips:
            runs[str(seed)]["quantized_weights"] = flips.num_weights
    return runs


def summary(runs: dict, settled: int, key: str = "fidelity") -> dict:
    """Per seed and over all seeds: mean, standard deviation, min and max of `key` from epoch `settled` on."""
    per_seed = {seed: spread([r[key] for r in run["rows"] if r["epoch"] >= settled]) for seed, run in runs.items()}
    pooled = [r[key] for run in runs.values() for r in run["rows"] if r["epoch"] >= settled]
    return {"per_seed": per_seed, "all": spread(pooled)}


def table(runs: dict) -> str:
    seeds = list(runs)
    first = runs[seeds[0]]["rows"][0]
    columns = [(key, label, digits) for key, label, digits in (
        ("fidelity", "fidelity", 3), ("map50_95", "COCO mAP50-95", 4),
        ("calib_fidelity", "fidelity on the calibration images", 3), ("changed", "weights changed", 0),
        ("reverted", "of them reverted", 0)) if key in first]
    what = " / ".join(label for _, label, _ in columns)
    lines = ["| epoch | " + " | ".join(f"seed {s}: {what}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for i, row in enumerate(runs[seeds[0]]["rows"]):
        cells = [" / ".join(f"{runs[s]['rows'][i][key]:.{digits}f}" for key, _, digits in columns) for s in seeds]
        lines.append(f"| {row['epoch']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: dict, title: str) -> Optional[bytes]:
    """Fidelity against epoch, one line per seed, as PNG bytes (None without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for seed, run in runs.items():
        epochs, values = [r["epoch"] for r in run["rows"]], [r["fidelity"] for r in run["rows"]]
        line, = ax.plot(epochs, values, marker="o", label=f"seed {seed}, val images")
        if "calib_fidelity" in run["rows"][0]:
            ax.plot(epochs, [r["calib_fidelity"] for r in run["rows"]], marker="s", linestyle="--",
                    color=line.get_color(), label=f"seed {seed}, calibration images (trained on)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("fidelity mAP50-95 (fake quant)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return buffer.getvalue()


def variant(args: argparse.Namespace) -> str:
    """The settings that differ from fine_tune's defaults, for the plot title (empty when none do)."""
    changed = [f"{args.calib_method} calibration" if args.calib_method != "mse" else "",
               f"lr {args.lr:g}" if args.lr != 1e-5 else "",
               f"block weight {args.block_weight:g}" if args.block_weight != 1.0 else "",
               f"pull {args.pull_to_grid:g}" if args.pull_to_grid > 0 else "",
               "learned amax" if args.learn_amax else ""]
    return "".join(f", {c}" for c in changed if c)


def main(argv=None) -> int:
    from qdqtorch.atomic import atomic_write_bytes, atomic_write_text

    args = parse_args(argv)
    where = machine()   # before the run: its load average is the one at start
    print(where)
    runs = run(args)
    result = {"machine": where, "settings": vars(args), "runs": runs, "settled": summary(runs, args.settled)}
    if args.calib_fidelity:
        result["settled_calib_fidelity"] = summary(runs, args.settled, "calib_fidelity")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(result, indent=1))
    text = table(runs)
    atomic_write_text(out / "table.md", text + "\n")
    png = plot(runs, f"{Path(args.model).name}, {args.rules}{variant(args)}: fidelity after each distillation epoch")
    if png is not None:
        atomic_write_bytes(out / "trajectory.png", png)
    print(text)
    print(json.dumps({k: v for k, v in result.items() if k.startswith("settled")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
