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
