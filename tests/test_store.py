"""Every kind of guide saves and loads back as itself, with the same outputs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mmdisco.guidance.conditional import ConditionalDiscriminator
from mmdisco.guidance.critic import Critic
from mmdisco.guidance.discriminator import Discriminator
from mmdisco.guidance.store import load_guide, save_guide
from mmdisco.io import read_json

AUDIO, VIDEO = (1, 8, 8), (4, 3, 8, 8)
SMALL = dict(audio_shape=AUDIO, video_shape=VIDEO, width=8, time_dim=16)


def inputs(n: int = 3):
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(n, *AUDIO, generator=gen), torch.randn(n, *VIDEO, generator=gen),
            torch.tensor([900, 400, 20])[:n])


def perturbed(module: nn.Module) -> nn.Module:
    """Non-zero everywhere (zero-initialised layers would hide a weight that fails to load)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module.eval()


@pytest.mark.parametrize("kind, build, extra", [
    ("discriminator", lambda: Discriminator(head_hidden=16, video_grid=2, **SMALL), {}),
    ("conditional_discriminator",
     lambda: ConditionalDiscriminator(cond_dim=5, head_hidden=16, video_grid=2, **SMALL),
     {"cond": torch.randn(3, 5, generator=torch.Generator().manual_seed(2))}),
    ("critic", lambda: Critic(**SMALL), {}),
])
def test_each_kind_round_trips(tmp_path, kind, build, extra):
    module = perturbed(build())
    save_guide(module, tmp_path)
    assert read_json(tmp_path / "discriminator.json")["kind"] == kind
    again = load_guide(tmp_path)
    assert type(again) is type(module) and again.config == module.config
    a, v, t = inputs()
    with torch.no_grad():
        assert torch.equal(again(a, v, t, **extra), module(a, v, t, **extra))


def test_an_unknown_module_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(TypeError, match="cannot save a Linear"):
        save_guide(nn.Linear(2, 2), tmp_path)
    assert list(tmp_path.iterdir()) == []
