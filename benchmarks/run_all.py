#!/usr/bin/env python
"""Regenerate every measured table of BENCHMARKS.md and README.md: run each benchmark command in order, one at a time
(so speed ratios are not disturbed by each other), log its output to runs/all/NAME.log and its wall time to
runs/all/run_all.json. The commands are exactly the ones BENCHMARKS.md prints beside its tables.

    python benchmarks/run_all.py                 # everything: several hours on the 2-core CI CPU
    python benchmarks/run_all.py --list          # the commands, without running them
    python benchmarks/run_all.py --only rules qat8
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, BENCHMARKS.md section, command): accuracy first, then speed
COMMANDS = [
    ("peers", "§1", "python benchmarks/peers.py --install-peers --out runs/peers"),
    ("ptq_methods", "§2", "python benchmarks/bench_ptq_methods.py --out runs/results_ptq_methods.json"),
    ("entropy", "§2", "python benchmarks/entropy_analysis.py --top 5 --out runs/entropy_analysis.json"),
    ("rules", "§5", "python benchmarks/bench_rules.py --model ../shared/models/yolov5n.pt --repo "
                    "tests/fixtures/yolov5_repo --data ../shared/data/coco128/coco128.yaml --imgsz 640 --num-calib "
                    "128 --fp16 --fp16-method mse --out runs/bench_rules"),
    ("qat8", "§6", "python examples/qat_distill.py --model ../shared/models/yolov5n.pt --repo "
                   "tests/fixtures/yolov5_repo --images ../shared/data/coco128/images/train2017 --val-data "
                   "../shared/data/coco128/coco128.yaml --epochs 8 --imgsz 640 --batch 16 --device cpu "
                   "--rules none --out runs/qat8"),
    ("qat3", "§6", "python examples/qat_distill.py --model ../shared/models/yolov5n.pt --repo "
                   "tests/fixtures/yolov5_repo --images ../shared/data/coco128/images/train2017 --val-data "
                   "../shared/data/coco128/coco128.yaml --epochs 3 --imgsz 640 --batch 16 --device cpu "
                   "--rules none --out runs/qat3"),
    ("fidelity", "§7", "python benchmarks/bench_fidelity.py --out runs/bench_fidelity --extra-model "
                       "../shared/models/ppe_yolov5n.pt:tensorrt"),
    ("recovery", "§8", "python benchmarks/bench_recovery.py --models ../shared/models/yolov5n.pt --rules tensorrt "
                       "tensorrt-int8-residual --methods none adaround --num-calib 32 --num-eval 32"),
    ("recovery_ppe", "§8", "python benchmarks/bench_recovery.py --models ../shared/models/ppe_yolov5n.pt --rules "
                           "tensorrt tensorrt-int8-residual --methods none adaround --num-calib 32 --num-eval 32"),
    ("breakdown", "§8b", "python benchmarks/fidelity_breakdown.py --imgsz 320 --num-calib 32 --parts"),
    ("ranges", "§8b", "OMP_NUM_THREADS=1 python benchmarks/bench_recovery.py --models ../shared/models/yolov5n.pt "
                      "--rules tensorrt --methods none ranges adaround+ranges --num-calib 32 --imgsz 320 "
                      "--recover-images 16"),
    ("ranges_ppe", "§8b", "OMP_NUM_THREADS=1 python benchmarks/bench_recovery.py --models "
                          "../shared/models/ppe_yolov5n.pt --rules tensorrt --methods none ranges --num-calib 32 "
                          "--imgsz 320 --recover-images 16"),
    ("calib_methods", "§8c", "OMP_NUM_THREADS=1 python benchmarks/bench_recovery.py --models "
                             "../shared/models/yolov5n.pt --rules tensorrt --methods none --calib-methods max entropy "
                             "mse percentile:99.99 percentile:99.999 --num-calib 32 --imgsz 320 --out "
                             "runs/calib_methods"),
    ("block", "§8c", "OMP_NUM_THREADS=1 python benchmarks/bench_recovery.py --models ../shared/models/yolov5n.pt "
                     "--rules tensorrt --methods none block --num-calib 32 --imgsz 320 --recover-images 32 "
                     "--block-iters 300 --out runs/block_v5n"),
    ("block_variants", "§8c", "OMP_NUM_THREADS=1 python benchmarks/bench_recovery.py --models "
                              "../shared/models/yolov5n.pt --rules tensorrt --methods none block:learn_ranges=0 "
                              "block:drop=0 --num-calib 32 --imgsz 320 --recover-images 32 --block-iters 300 --out "
                              "runs/block_v5n_variants"),
    ("block_128", "§8c", "OMP_NUM_THREADS=1 python benchmarks/bench_recovery.py --models ../shared/models/yolov5n.pt "
                         "--rules tensorrt --methods none block --num-calib 32 --imgsz 320 --recover-images 128 "
                         "--block-iters 300 --out runs/block_v5n_128"),
    ("block_generalisation", "§8c", "OMP_NUM_THREADS=1 python benchmarks/block_generalisation.py"),
    ("bits", "§8d", "OMP_NUM_THREADS=1 python benchmarks/fidelity_vs_bits.py --imgsz 320 --num-calib 32"),
    ("bits_ppe", "§8d", "OMP_NUM_THREADS=1 python benchmarks/fidelity_vs_bits.py --imgsz 320 --num-calib 32 --model "
                        "../shared/models/ppe_yolov5n.pt"),
    ("grids", "§8e", "OMP_NUM_THREADS=1 python benchmarks/bench_recovery.py --models ../shared/models/yolov5n.pt "
                     "--methods none --calib-methods mse max --grids symmetric shifted --out runs/grids_v5n"),
    ("grids_ppe", "§8e", "OMP_NUM_THREADS=1 python benchmarks/bench_recovery.py --models "
                         "../shared/models/ppe_yolov5n.pt --methods none --calib-methods mse max --grids symmetric "
                         "shifted --out runs/grids_ppe"),
    ("distill", "§8f", "OMP_NUM_THREADS=1 python benchmarks/bench_recovery.py --models ../shared/models/yolov5n.pt "
                       "--methods none distill --grids shifted --out runs/distill_v5n"),
    ("distill_ppe", "§8f", "OMP_NUM_THREADS=1 python benchmarks/bench_recovery.py --models "
                           "../shared/models/ppe_yolov5n.pt --methods none distill --grids shifted --out "
                           "runs/distill_ppe"),
    ("distill_variants", "§8g", "OMP_NUM_THREADS=1 python benchmarks/bench_recovery.py --models "
                                "../shared/models/yolov5n.pt --rules tensorrt --methods none distill "
                                "distill:schedule=cosine --grids shifted --out runs/distill_variants_a"),
    ("distill_cosine_residual", "§8g", "OMP_NUM_THREADS=2 python benchmarks/bench_recovery.py --models "
                                       "../shared/models/yolov5n.pt --rules tensorrt-int8-residual --methods "
                                       "distill:schedule=cosine --grids shifted --out runs/cosine_v5n_res"),
    ("distill_learn_amax", "§8g", "OMP_NUM_THREADS=1 python benchmarks/bench_recovery.py --models "
                                  "../shared/models/yolov5n.pt --rules tensorrt --methods "
                                  "distill:schedule=cosine,learn_amax=1 --grids shifted --out runs/learn_amax_v5n"),
    ("distill_ppe_two_threads", "§8g", "OMP_NUM_THREADS=2 python benchmarks/bench_recovery.py --models "
                                       "../shared/models/ppe_yolov5n.pt --methods none distill --grids shifted "
                                       "--out runs/distill_ppe_head"),
    ("fidelity_floor", "§8g", "python benchmarks/fidelity_breakdown.py --grid shifted"),
    ("distill_seeds", "§8h", "OMP_NUM_THREADS=1 python benchmarks/bench_recovery.py --models "
                             "../shared/models/yolov5n.pt --rules tensorrt tensorrt-int8-residual --methods none "
                             "distill distill:seed=1 distill:seed=2 --grids shifted --out runs/distill_seeds"),
    ("cosine_seeds_trt", "§8h", "OMP_NUM_THREADS=1 python benchmarks/bench_recovery.py --models "
                                "../shared/models/yolov5n.pt --rules tensorrt --methods "
                                "distill:schedule=cosine,seed=1 distill:schedule=cosine,seed=2 --grids shifted "
                                "--out runs/cosine_seeds_trt"),
    ("cosine_seeds_res", "§8h", "OMP_NUM_THREADS=1 python benchmarks/bench_recovery.py --models "
                                "../shared/models/yolov5n.pt --rules tensorrt-int8-residual --methods "
                                "distill:schedule=cosine,seed=1 distill:schedule=cosine,seed=2 --grids shifted "
                                "--out runs/cosine_seeds_res"),
    ("learn_amax_res", "§8h", "OMP_NUM_THREADS=1 python benchmarks/bench_recovery.py --models "
                              "../shared/models/yolov5n.pt --rules tensorrt-int8-residual --methods "
                              "distill:learn_amax=1 --grids shifted --out runs/learn_amax_res"),
    ("learn_amax_res_seeds", "§8h", "OMP_NUM_THREADS=2 python benchmarks/bench_recovery.py --models "
                                    "../shared/models/yolov5n.pt --rules tensorrt-int8-residual --methods "
                                    "distill:learn_amax=1,seed=1 distill:learn_amax=1,seed=2 --grids shifted "
                                    "--out runs/learn_amax_res_seeds"),
    ("learn_amax_ppe", "§8h", "OMP_NUM_THREADS=2 python benchmarks/bench_recovery.py --models "
                              "../shared/models/ppe_yolov5n.pt --rules tensorrt-int8-residual --methods none "
                              "distill:learn_amax=1 --grids shifted --out runs/learn_amax_ppe"),
    ("learn_amax_trt", "§8h", "OMP_NUM_THREADS=2 python benchmarks/bench_recovery.py --models "
                              "../shared/models/yolov5n.pt --rules tensorrt --methods distill:learn_amax=1 --grids "
                              "shifted --out runs/learn_amax_trt"),
    ("traj_trt", "§8i", "OMP_NUM_THREADS=1 python benchmarks/distill_trajectory.py --rules tensorrt --seeds 0 1 "
                        "--out runs/traj_tensorrt"),
    ("traj_res", "§8i", "OMP_NUM_THREADS=1 python benchmarks/distill_trajectory.py --rules tensorrt-int8-residual "
                        "--seeds 0 1 --out runs/traj_tensorrt-int8-residual"),
    ("traj_res_learn_amax", "§8i", "OMP_NUM_THREADS=2 python benchmarks/distill_trajectory.py --rules "
                                   "tensorrt-int8-residual --learn-amax --seeds 0 1 --out runs/traj_res_learn_amax"),
    ("traj_ppe", "§8i", "OMP_NUM_THREADS=1 python benchmarks/distill_trajectory.py --model "
                        "../shared/models/ppe_yolov5n.pt --rules tensorrt --seeds 0 1 --out runs/traj_ppe_tensorrt"),
    ("traj_trt_max", "§8i", "OMP_NUM_THREADS=1 python benchmarks/distill_trajectory.py --rules tensorrt "
                            "--calib-method max --seeds 0 1 --out runs/traj_tensorrt_max"),
    ("traj_calib_trt", "§8j", "OMP_NUM_THREADS=1 python benchmarks/distill_trajectory.py --rules tensorrt --seeds 0 "
                              "--epochs 12 --calib-fidelity --out runs/traj_calib_tensorrt"),
    ("traj_calib_res", "§8j", "OMP_NUM_THREADS=1 python benchmarks/distill_trajectory.py --rules "
                              "tensorrt-int8-residual --seeds 0 --epochs 12 --calib-fidelity --out "
                              "runs/traj_calib_tensorrt-int8-residual"),
    ("traj_calib_ppe", "§8j", "OMP_NUM_THREADS=1 python benchmarks/distill_trajectory.py --model "
                              "../shared/models/ppe_yolov5n.pt --rules tensorrt --seeds 0 --epochs 12 "
                              "--calib-fidelity --out runs/traj_calib_ppe_tensorrt"),
    ("traj_lr3e-5", "§8k", "OMP_NUM_THREADS=1 python benchmarks/distill_trajectory.py --rules tensorrt --seeds 0 "
                           "--epochs 10 --calib-fidelity --lr 3e-5 --out runs/traj_lr3e-5_trt"),
    ("traj_lr5e-6", "§8k", "OMP_NUM_THREADS=1 python benchmarks/distill_trajectory.py --rules tensorrt --seeds 0 "
                           "--epochs 12 --calib-fidelity --lr 5e-6 --out runs/traj_lr5e-6_trt"),
    ("traj_lr3e-6", "§8k", "OMP_NUM_THREADS=1 python benchmarks/distill_trajectory.py --rules tensorrt --seeds 0 "
                           "--epochs 12 --calib-fidelity --lr 3e-6 --out runs/traj_lr3e-6_trt"),
    ("traj_output_only", "§8k", "OMP_NUM_THREADS=1 python benchmarks/distill_trajectory.py --rules tensorrt --seeds "
                                "0 --epochs 10 --calib-fidelity --block-weight 0 --out runs/traj_bw0_trt"),
    ("traj_flips", "§8k", "OMP_NUM_THREADS=1 python benchmarks/distill_trajectory.py --rules tensorrt --seeds 0 "
                          "--epochs 10 --track-flips --out runs/traj_flips_trt"),
    ("traj_pull0.01", "§8k", "OMP_NUM_THREADS=1 python benchmarks/distill_trajectory.py --rules tensorrt --seeds 0 "
                             "--epochs 10 --pull-to-grid 0.01 --out runs/traj_pull0.01_trt"),
    ("traj_pull0.05", "§8k", "OMP_NUM_THREADS=1 python benchmarks/distill_trajectory.py --rules tensorrt --seeds 0 "
                             "--epochs 10 --pull-to-grid 0.05 --out runs/traj_pull0.05_trt"),
    ("traj_pull1", "§8k", "OMP_NUM_THREADS=1 python benchmarks/distill_trajectory.py --rules tensorrt --seeds 0 "
                          "--epochs 10 --pull-to-grid 1 --out runs/traj_pull1_trt"),
    ("traj_pull0.01_res", "§8k", "OMP_NUM_THREADS=1 python benchmarks/distill_trajectory.py --rules "
                                 "tensorrt-int8-residual --seeds 0 --epochs 10 --pull-to-grid 0.01 --out "
                                 "runs/traj_pull0.01_res"),
    ("traj_pull1_res", "§8k", "OMP_NUM_THREADS=1 python benchmarks/distill_trajectory.py --rules "
                              "tensorrt-int8-residual --seeds 0 --epochs 10 --pull-to-grid 1 --out "
                              "runs/traj_pull1_res"),
    ("fidelity_resolution", "§8l", "OMP_NUM_THREADS=1 python benchmarks/fidelity_resolution.py --distill --draws 5 "
                                   "--ort --out runs/fidelity_resolution_ort"),
    ("fidelity_resolution_ppe", "§8l", "OMP_NUM_THREADS=1 python benchmarks/fidelity_resolution.py --model "
                                       "../shared/models/ppe_yolov5n.pt --distill --draws 5 --ort --out "
                                       "runs/fidelity_resolution_ppe_ort"),
    ("fidelity_resolution_res", "§8l", "OMP_NUM_THREADS=1 python benchmarks/fidelity_resolution.py --rules "
                                       "tensorrt-int8-residual --distill --draws 5 --ort --out "
                                       "runs/fidelity_resolution_res_ort"),
    ("fidelity_resolution_ppe_res", "§8l", "OMP_NUM_THREADS=1 python benchmarks/fidelity_resolution.py --model "
                                           "../shared/models/ppe_yolov5n.pt --rules tensorrt-int8-residual --distill "
                                           "--draws 5 --ort --out runs/fidelity_resolution_ppe_res_ort"),
    ("fidelity_resolution_res_seed2", "§8l", "OMP_NUM_THREADS=1 python benchmarks/fidelity_resolution.py --rules "
                                             "tensorrt-int8-residual --distill --seed 2 --draws 5 --ort --out "
                                             "runs/fidelity_resolution_res_seed2_ort"),
    ("fidelity_resolution_seed1", "§8l", "OMP_NUM_THREADS=1 python benchmarks/fidelity_resolution.py --distill "
                                         "--seed 1 --draws 5 --ort --out runs/fidelity_resolution_seed1_ort"),
    ("fidelity_resolution_seed2", "§8l", "OMP_NUM_THREADS=1 python benchmarks/fidelity_resolution.py --distill "
                                         "--seed 2 --draws 5 --ort --out runs/fidelity_resolution_seed2_ort"),
    ("fidelity_resolution_res_seed1", "§8l", "OMP_NUM_THREADS=1 python benchmarks/fidelity_resolution.py --rules "
                                             "tensorrt-int8-residual --distill --seed 1 --draws 5 --ort --out "
                                             "runs/fidelity_resolution_res_seed1_ort"),
    ("ptq_jitter", "§8l", "OMP_NUM_THREADS=1 python scripts/ptq.py --model ../shared/models/yolov5n.pt --repo "
                          "tests/fixtures/yolov5_repo --data ../shared/data/coco128/coco128.yaml --grid shifted "
                          "--jitter-draws 5 --ort-eval --out runs/jitter_yolov5n"),
    ("ptq_jitter_ppe", "§8l", "OMP_NUM_THREADS=1 python scripts/ptq.py --model ../shared/models/ppe_yolov5n.pt "
                              "--repo tests/fixtures/yolov5_repo --data ../shared/data/coco128/coco128.yaml --grid "
                              "shifted --jitter-draws 5 --ort-eval --out runs/jitter_ppe_yolov5n"),
    ("ptq_jitter_distill", "§8l", "OMP_NUM_THREADS=1 python scripts/ptq.py --model ../shared/models/yolov5n.pt "
                                  "--repo tests/fixtures/yolov5_repo --data ../shared/data/coco128/coco128.yaml "
                                  "--grid shifted --rules tensorrt --recover distill --jitter-draws 5 --ort-eval "
                                  "--out runs/jitter_distill_tensorrt"),
    ("ptq_jitter_distill_res", "§8l", "OMP_NUM_THREADS=1 python scripts/ptq.py --model ../shared/models/yolov5n.pt "
                                      "--repo tests/fixtures/yolov5_repo --data ../shared/data/coco128/coco128.yaml "
                                      "--grid shifted --rules tensorrt-int8-residual --recover distill "
                                      "--jitter-draws 5 --ort-eval --out runs/jitter_distill_tensorrt-int8-residual"),
    ("grids_recovery", "§8e", "OMP_NUM_THREADS=1 python benchmarks/bench_recovery.py --models "
                              "../shared/models/yolov5n.pt --methods none adaround ranges --rules tensorrt --grids "
                              "shifted --imgsz 320 --num-calib 32 --out runs/grids_recovery_v5n"),
    ("grids_recovery_ppe", "§8e", "OMP_NUM_THREADS=1 python benchmarks/bench_recovery.py --models "
                                  "../shared/models/ppe_yolov5n.pt --methods none adaround ranges --rules tensorrt "
                                  "--grids shifted --imgsz 320 --num-calib 32 --out runs/grids_recovery_ppe"),
    ("families", "§9", "python benchmarks/families.py --out runs/families"),
    ("families_v7", "§9", "OMP_NUM_THREADS=1 python benchmarks/families.py --out runs/families_v7 --only yolov7"),
    ("qat3_residual", "§6b", "python examples/qat_distill.py --model ../shared/models/yolov5n.pt --repo "
                             "tests/fixtures/yolov5_repo --images ../shared/data/coco128/images/train2017 --val-data "
                             "../shared/data/coco128/coco128.yaml --epochs 3 --imgsz 640 --batch 16 --device cpu "
                             "--rules tensorrt-int8-residual --calib-method mse --out runs/qat3_residual_mse"),
    ("qat3_residual_shifted", "§6b", "python examples/qat_distill.py --model ../shared/models/yolov5n.pt --repo "
                                     "tests/fixtures/yolov5_repo --images ../shared/data/coco128/images/train2017 "
                                     "--val-data ../shared/data/coco128/coco128.yaml --epochs 3 --imgsz 640 --batch 16 "
                                     "--device cpu --rules tensorrt-int8-residual --calib-method mse --grid shifted "
                                     "--out runs/qat3_residual_shifted"),
    ("qat8_residual_shifted", "§6b", "python examples/qat_distill.py --model ../shared/models/yolov5n.pt --repo "
                                     "tests/fixtures/yolov5_repo --images ../shared/data/coco128/images/train2017 "
                                     "--val-data ../shared/data/coco128/coco128.yaml --epochs 8 --imgsz 640 --batch 16 "
                                     "--device cpu --rules tensorrt-int8-residual --calib-method mse --grid shifted "
                                     "--out runs/qat8_residual_shifted"),
    ("qat8_residual", "§6b", "python examples/qat_distill.py --model ../shared/models/yolov5n.pt --repo "
                             "tests/fixtures/yolov5_repo --images ../shared/data/coco128/images/train2017 --val-data "
                             "../shared/data/coco128/coco128.yaml --epochs 8 --imgsz 640 --batch 16 --device cpu "
                             "--rules tensorrt-int8-residual --calib-method mse --out runs/qat8_residual_mse"),
    ("compute_amax", "§3", "python benchmarks/bench_compute_amax.py --num-images 128 --imgsz 640"),
    ("sweep640", "§4", "python benchmarks/bench_sensitivity.py --imgsz 640 --num-images 128 --naive-units 6 "
                       "--naive-allocator both --json runs/sensitivity640.json"),
    ("sweep320", "§4", "python benchmarks/bench_sensitivity.py --imgsz 320 --num-images 32 --naive-allocator both "
                       "--json runs/sensitivity.json"),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", metavar="NAME", help="run only these (names from --list)")
    p.add_argument("--list", action="store_true", help="print the commands and exit")
    p.add_argument("--out", default="runs/all", help="folder for the logs and run_all.json")
    args = p.parse_args(argv)
    names = [n for n, _, _ in COMMANDS]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {names}")
    chosen = [c for c in COMMANDS if not args.only or c[0] in args.only]
    if args.list:
        for name, section, cmd in chosen:
            print(f"{name:20s} {section:5s} {cmd}")
        return 0
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "run_all.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    failed = []
    start = time.perf_counter()
    for i, (name, section, cmd) in enumerate(chosen, 1):
        print(f"[{i}/{len(chosen)}] {name} ({section}): {cmd}", flush=True)
        t0 = time.perf_counter()
        with open(out / f"{name}.log", "w") as log:
            words = shlex.split(cmd)
            assignments = [w for w in itertools.takewhile(lambda w: "=" in w and not w.startswith("-"), words)]
            argv_cmd = [sys.executable if a == "python" else a for a in words[len(assignments):]]
            run_env = {**env, **dict(a.split("=", 1) for a in assignments)}  # leading VAR=value, as in a shell
            rc = subprocess.run(argv_cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=run_env).returncode
        seconds = time.perf_counter() - t0
        record[name] = {"command": cmd, "section": section, "seconds": round(seconds, 1), "returncode": rc,
                        "commit": commit, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        record_path.write_text(json.dumps(record, indent=1))
        print(f"    {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {seconds:.0f} s; log {out / (name + '.log')}",
              flush=True)
        if rc:
            failed.append(name)
    print(f"all done in {time.perf_counter() - start:.0f} s at commit {commit}" +
          (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
