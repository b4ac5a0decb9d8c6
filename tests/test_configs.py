"""The shipped configs are valid settings and quantization configs."""
from pathlib import Path

import pytest

from qdqtorch.pipeline import PTQSettings
from qdqtorch.quantize import QuantConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.*"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    settings = PTQSettings.from_file(path)
    quant = dict(settings.quant)
    quant.pop("ignore", None)
    config = QuantConfig.from_dict(quant)
    assert config.input.num_bits == 8 and config.weight.axis == 0
    assert settings.calib_method in ("max", "entropy", "mse", "percentile")


def test_config_overrides_by_keyword_and_rejects_typos(tmp_path):
    settings = PTQSettings.from_file(CONFIGS[0], imgsz=320)
    assert settings.imgsz == 320
    (tmp_path / "bad.yaml").write_text("calib_methd: mse\n")
    with pytest.raises(ValueError, match=r"bad.yaml.*calib_methd"):
        PTQSettings.from_file(tmp_path / "bad.yaml")


@pytest.mark.parametrize("line, field, expected", [
    ('export: "no"', "export", "boolean"),
    ('ort_eval: "false"', "ort_eval", "boolean"),
    ("ignore: 5", "ignore", "list of strings"),
    ("batch: 16.5", "batch", "integer"),
    ('imgsz: "256px"', "imgsz", "integer"),
    ("percentile: [99]", "percentile", "number"),
    ("quant:\n  ignore: 5", "ignore", "string"),
    ("quant:\n  overrides: {a: 1}", "overrides", "list"),
])
def test_config_values_of_the_wrong_type_name_file_field_and_type(tmp_path, line, field, expected):
    """YAML strings are not booleans, floats are not integers: each wrong type is one error naming all three."""
    path = tmp_path / "typo.yaml"
    path.write_text(line + "\n")
    with pytest.raises(ValueError) as info:
        PTQSettings.from_file(path)
    message = str(info.value)
    assert "typo.yaml" in message and f"`{field}`" in message and expected in message, message


def test_config_types_that_are_right_still_load(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("export: no\nort_eval: true\nignore: 'model\\.0\\.'\nbatch: 4\npercentile: 99\n"
                    "num_eval: null\nquant:\n  ignore: ['model\\.1\\.']\n")
    settings = PTQSettings.from_file(path)
    assert settings.export is False and settings.ort_eval is True and settings.ignore == ["model\\.0\\."]
    assert settings.percentile == 99 and settings.num_eval is None
    with pytest.raises(ValueError, match=r"q.yaml: `modules` must be"):
        QuantConfig.from_dict({"modules": 3}, where="q.yaml")
