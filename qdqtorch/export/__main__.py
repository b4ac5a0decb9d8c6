"""`python -m qdqtorch.export model.onnx [--fp16]`: same as `python -m qdqtorch.export.check`."""
import sys

from .check import main

sys.exit(main())
