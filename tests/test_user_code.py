"""qdqtorch.user_code.import_object: the one 'module:name' loader behind QuantConfig.modules, preprocess hooks, the
sweep's --model/--calib-data/--metric."""
from __future__ import annotations

import collections
import os

import pytest
from torch import nn

from qdqtorch.user_code import import_object
from qdqtorch.quantize import QuantConfig
from qdqtorch.user_code import import_callable


def test_module_specs_with_dotted_names_and_files(tmp_path) -> None:
    assert import_object("os.path:join", "x") is os.path.join
    assert import_object("collections:OrderedDict.fromkeys", "x") == collections.OrderedDict.fromkeys
    user = tmp_path / "user_code.py"
    user.write_text("VALUE = 41\ndef answer():\n    return VALUE + 1\n")
    assert import_object(f"{user}:answer", "hook", files=True)() == 42
    assert QuantConfig(modules=["torch.nn:Conv2d"]).module_map().keys() == {nn.Conv2d}


@pytest.mark.parametrize("spec, files, error, message", [
    ("os.path.join", False, ValueError, r"what 'os.path.join': expected 'package.module:name'$"),
    ("no_such_module_xyz:f", False, ValueError, "cannot import module 'no_such_module_xyz'"),
    ("os.path:no_such_name", False, ValueError, "os.path has no attribute 'no_such_name'"),
    ("missing/dir/file.py:f", True, FileNotFoundError, "what file not found: .*file.py"),
    ("missing/dir/file.py:f", False, ValueError, "cannot import module"),  # files only where the caller allows them
])
def test_bad_specs_say_what_and_which_spec(spec, files, error, message) -> None:
    with pytest.raises(error, match=message):
        import_object(spec, "what", files=files)


def test_callers_keep_their_own_checks() -> None:
    with pytest.raises(ValueError, match="--metric 'os:sep': 'sep' is not callable"):
        import_callable("os:sep", "--metric")
    with pytest.raises(ValueError, match="QuantConfig.modules 'torch.nn:NoSuchLayer'"):
        QuantConfig(modules=["torch.nn:NoSuchLayer"])
