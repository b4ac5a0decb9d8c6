"""Install hints are commands that work from a clone; the README documents the CPU-only torch path."""
from __future__ import annotations

import re
import sys

import pytest

from conftest import REPO_ROOT

def test_every_install_hint_in_the_code_installs_from_the_checkout():
    """`pip install qdqtorch[onnx]` names a PyPI package that does not exist: hints must be `pip install -e ".[x]"`."""
    bad = []
    for path in [*(REPO_ROOT / "qdqtorch").rglob("*.py"), *(REPO_ROOT / "scripts").glob("*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            # a third-party package that exists on PyPI (the packaged yolov5 repository) may be named as is
            allowed = r"""pip install -e \\?"\.\[|INSTALL_HINT =|pip install \{PACKAGE\}"""
            if "pip install" in line and not re.search(allowed, line):
                bad.append(f"{path.relative_to(REPO_ROOT)}:{n}: {line.strip()}")
    assert bad == []

def test_missing_onnxruntime_says_how_to_install_it(monkeypatch, tmp_path):
    from qdqtorch.export.runtime import OnnxRuntimeModule
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # import fails as if not installed
    with pytest.raises(ImportError, match=re.escape('pip install -e ".[onnx]"')):
        OnnxRuntimeModule(tmp_path / "m.onnx")

def test_readme_gives_the_cpu_only_torch_index_and_keeps_the_main_job_block():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in readme
    block = readme.split("<!-- main-job -->", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert "pip install torch==2.14.1 torchvision==0.29.1\n" in block and 'pip install -e ".[yolo,onnx,dev]"' in block
