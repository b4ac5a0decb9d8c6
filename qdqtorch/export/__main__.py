"""CLI of the Q/DQ checker: ``python -m qdqtorch.export model.onnx [--fp16] [--json]``; exit 1 on errors."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from .checker import check_qdq


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the report of one ONNX file; exit 1 on errors, 2 when the file cannot be read."""
    parser = argparse.ArgumentParser(prog="python -m qdqtorch.export",
                                     description="Check a Q/DQ ONNX model for TensorRT INT8 deployment.")
    parser.add_argument("model", type=Path, help="ONNX file to check")
    parser.add_argument("--fp16", action="store_true", help="also require float tensors to be float16")
    parser.add_argument("--allow-float", action="append", default=[], metavar="GLOB",
                        help="node-name glob of weighted ops allowed to stay unquantized (repeatable)")
    parser.add_argument("--int8-matmul", action="store_true",
                        help="refuse float MatMuls of two activations (attention) instead of warning about them")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    args = parser.parse_args(argv)
    try:
        report = check_qdq(args.model, fp16=args.fp16, allow_float=args.allow_float,
                           float_matmul=not args.int8_matmul)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
