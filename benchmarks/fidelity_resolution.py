#!/usr/bin/env python
"""How finely does one fidelity figure resolve a model? The same model scored again after a change no deployment
can avoid: every bias moved by one float32 ulp (random sign, seeded), the size of the differences between PyTorch,
ONNX Runtime and TensorRT kernels (accumulation order, fused bias adds). The spread of those draws is the
measurement's own resolution for one model: differences between single figures below it say nothing.

    python benchmarks/fidelity_resolution.py --draws 5 --out runs/fidelity_resolution

Reference protocol (calibrate on 128 coco128 train images, mse, `--grid`, `--rules`; 128 val images at 640). Scores
the float model, the calibrated INT8 model (fake quant) and, with `--distill`, the same after `fine_tune`'s default
distillation (`--seed`, 0 by default): each unperturbed and in `--draws` perturbed copies, fidelity and COCO mAP
from one pass; with `--ort` each INT8 copy also exported as Q/DQ ONNX and scored in ONNX Runtime.
Writes results.json and a markdown table.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import add_int8_args, add_protocol_args, int8_setup, machine  # noqa: E402

from qdqtorch.eval.jitter import jitter  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_protocol_args(p)
    add_int8_args(p)
    p.add_argument("--draws", type=int, default=5, help="perturbed copies scored per model")
    p.add_argument("--distill", action="store_true", help="also score the model after the default distillation")
    p.add_argument("--seed", type=int, default=0, help="the distillation's shuffling seed (fine_tune(seed=))")
    p.add_argument("--ort", action="store_true", help="also score each INT8 model and draw exported as Q/DQ ONNX, in "
                   "ONNX Runtime (the runtime of the issue-21 goals)")
    p.add_argument("--out", default="runs/fidelity_resolution")
    args = p.parse_args(argv)
    if args.draws < 2:
        p.error(f"--draws {args.draws}: a spread needs at least 2")
    return args


def table(results: dict) -> str:
    """Markdown: per model and figure, the unperturbed value, the draws and their spread."""
    lines = ["| model | unperturbed | one-ulp bias draws | spread of all (mean, sd, min - max) |", "|---|---|---|---|"]
    for label, figures in results.items():
        for key, digits in (("fidelity", 3), ("map50_95", 4), ("fidelity_ort", 3), ("map50_95_ort", 4)):
            if key not in figures:
                continue
            values, s = figures[key]["values"], figures[key]
            draws = ", ".join(f"{v:.{digits}f}" for v in values[1:])
            name = ("fidelity" if key.startswith("fidelity") else "COCO mAP50-95") + \
                (" ONNX Runtime" if key.endswith("_ort") else "")
            lines.append(f"| {label}: {name} | {values[0]:.{digits}f} | {draws} | {s['mean']:.{digits}f}, "
                         f"{s['stdev']:.{digits}f}, {s['min']:.{digits}f} - {s['max']:.{digits}f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    where = machine()
    print(where)
    from qdqtorch.atomic import atomic_write_text
    from qdqtorch.export import export_onnx
    from qdqtorch.export.runtime import OnnxRuntimeModule
    from qdqtorch.models import PredictionOnly
    from qdqtorch.qat import fine_tune

    setup = int8_setup(args)
    loaded, score = setup.loaded, setup.score

    def score_both(candidate: torch.nn.Module, quantized: bool) -> dict:
        row = score(candidate)
        if args.ort and quantized:
            with tempfile.TemporaryDirectory() as tmp:
                onnx_path = export_onnx(PredictionOnly(candidate, loaded.layout), setup.sample, Path(tmp) / "m.onnx")
                row.update({f"{k}_ort": v for k, v in score(OnnxRuntimeModule(onnx_path)).items()})
        return row

    models = {"float": loaded.model, f"INT8 {args.rules}, no recovery": setup.model}
    if args.distill:
        distilled = copy.deepcopy(setup.model)
        print(fine_tune(distilled, setup.calib, num_images=args.num_calib, seed=args.seed,
                        progress=False), flush=True)
        models[f"INT8 {args.rules}, distillation (default, seed {args.seed})"] = distilled

    results = {}
    for label, model in models.items():
        model.eval()
        quantized = label != "float"
        found = jitter(model, lambda m, q=quantized: score_both(m, q), args.draws, progress=True)
        print(label, found, flush=True)
        results[label] = found.to_dict()["figures"]

    text = table(results)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps({"machine": where, "settings": vars(args),
                                                        "perturbation": "every bias one float32 ulp, seeds 1..draws",
                                                        "models": results}, indent=1))
    atomic_write_text(out / "table.md", text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
