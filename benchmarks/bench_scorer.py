"""Reference-protocol mAP of YOLOv5n on coco128 val, and the fast COCO scorer's speed versus pycocotools.

Runs the model once over the eval set (640 letterbox, conf 0.001, NMS IoU 0.65, max 300 detections by default),
scores the same detections with pycocotools' COCOeval and with qdqtorch's fast scorer (several repeats), and
checks that both give the same mAP50-95 / mAP50 (to 1e-4). Expected FP32 on all 128 images at 640:
mAP50-95 ~0.339, mAP50 ~0.520.

    python benchmarks/bench_scorer.py                       # 128 images, 640 px, CPU
    python benchmarks/bench_scorer.py --imgsz 320 --num-images 32 --device cuda
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qdqtorch.data import Preprocess  # noqa: E402
from qdqtorch.eval import EvalSet, evaluate  # noqa: E402
from qdqtorch.models import load_model  # noqa: E402

SHARED = ROOT.parent / "shared"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(SHARED / "models" / "yolov5n.pt"))
    ap.add_argument("--repo", default=str(ROOT / "tests" / "fixtures" / "yolov5_repo"),
                    help="training repository whose classes the checkpoint pickles (unpickling runs its code)")
    ap.add_argument("--data", default=str(SHARED / "data" / "coco128" / "coco128.yaml"))
    ap.add_argument("--split", default="val")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--num-images", type=int, default=None)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--interpolation", default="auto", help="auto | linear | area | nearest | cubic")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of each scorer")
    args = ap.parse_args()

    loaded = load_model(args.model, repo=args.repo, device=args.device)
    t0 = time.perf_counter()
    es = EvalSet.from_yaml(args.data, args.split, Preprocess.yolo(args.imgsz, interpolation=args.interpolation),
                           num_images=args.num_images)
    print(f"eval set: {len(es)} images, {es.num_annotations} boxes, {time.perf_counter() - t0:.2f}s to load")

    res = evaluate(loaded.model, es, layout=loaded.layout, batch_size=args.batch, scorer="pycocotools")
    print(f"{args.imgsz} px, {loaded.layout} layout: {res}")
    dets = res.detections
    rows = []
    for name in ("pycocotools", "fast"):
        scorer = es.scorer(name)
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            score = scorer.score(dets)
            times.append(time.perf_counter() - t)
        rows.append((name, score, min(times)))
        print(f"  {name:12s} mAP50-95 {score.map50_95:.6f}  mAP50 {score.map50:.6f}  best of {args.repeats}: "
              f"{min(times) * 1000:.1f} ms")
    (_, ref, t_ref), (_, fast, t_fast) = rows
    diff = max(abs(ref.map50_95 - fast.map50_95), abs(ref.map50 - fast.map50))
    print(f"  |fast - pycocotools| = {diff:.2e}; fast scorer {t_ref / t_fast:.1f}x faster")
    if torch.cuda.is_available():
        print(f"  cuda: {torch.cuda.get_device_name()}")
    return 0 if diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
