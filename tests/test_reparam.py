"""Re-parameterisable blocks (RepConv) fused into the one conv that is deployed: same float outputs as the training
form, checked against the unfused blocks with random BatchNorm statistics."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from qdqtorch.models import fuse_reparameterizable, load_model
from qdqtorch.models.reparam import FusedRepConv


def _randomise_bn(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.3, 3)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)


def _conv_bn(c1: int, c2: int, k: int, s: int, g: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False), nn.BatchNorm2d(c2))


class V7RepConv(nn.Module):
    """YOLOv7 / RepVGG training form, written from the paper: act(bn(conv3x3) + bn(conv1x1) + bn(x))."""

    def __init__(self, c1: int, c2: int, s: int = 1, g: int = 1) -> None:
        super().__init__()
        self.act = nn.SiLU()
        self.rbr_identity = nn.BatchNorm2d(c1) if c1 == c2 and s == 1 else None
        self.rbr_dense = _conv_bn(c1, c2, 3, s, g)
        self.rbr_1x1 = _conv_bn(c1, c2, 1, s, g)
        self.f, self.i = -1, 7  # layer-graph bookkeeping of the repository

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return self.act(self.rbr_dense(x) + self.rbr_1x1(x) + identity)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("c1,c2,s,g", [(8, 8, 1, 1), (8, 16, 1, 1), (8, 8, 2, 1), (8, 8, 1, 2), (8, 8, 1, 8)])
def test_yolov7_style_repconv_fuses_to_equal_outputs(c1, c2, s, g):
    torch.manual_seed(0)
    model = nn.Sequential(V7RepConv(c1, c2, s, g), V7RepConv(c2, c2)).eval()
    _randomise_bn(model)
    x = torch.randn(2, c1, 12, 12)
    with torch.no_grad():
        reference = model(x)
        assert fuse_reparameterizable(model) == ["0", "1"]
        got = model(x)
    assert all(isinstance(m, FusedRepConv) for m in model) and model[0].f == -1 and model[0].i == 7
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 2  # one conv per block, no Add
    assert _rel(got, reference) < 1e-4


def test_ultralytics_repconv_fuses_to_equal_outputs():
    from ultralytics.nn.modules.conv import RepConv
    torch.manual_seed(0)
    model = nn.Sequential(RepConv(8, 8, bn=True), RepConv(8, 16)).eval()
    _randomise_bn(model)
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        reference = model(x)
        assert len(fuse_reparameterizable(model)) == 2
        assert _rel(model(x), reference) < 1e-4


def test_load_model_fuses_yolov9_repconvs_by_default_and_keeps_them_on_request():
    """yolov9t.yaml (RepNCSPELAN4 -> RepConv): the default load is the deployed form with the same outputs."""
    torch.manual_seed(0)
    training = load_model("yolov9t.yaml", fuse_reparam=False)
    _randomise_bn(training.model)
    state = {k: v.clone() for k, v in training.model.state_dict().items()}
    torch.manual_seed(0)
    deployed = load_model("yolov9t.yaml", fuse_reparam=False)
    deployed.model.load_state_dict(state)
    names = fuse_reparameterizable(deployed.model)
    assert names and not any(isinstance(m, FusedRepConv) for m in training.model.modules())
    assert "re-parameterised blocks fused" in load_model("yolov9t.yaml").source
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert _rel(deployed.model(x)[0], training.model(x)[0]) < 1e-4
