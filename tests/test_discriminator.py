"""The joint discriminators: sizes, exact input gradients, per-modality residuals, non-separable fusion."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn

from mmdisco.guidance.discriminator import Discriminator, input_gradients, residuals
from support.gaussian import VectorDiscriminator

AUDIO, VIDEO = (1, 8, 8), (4, 3, 8, 8)


def small_disc(seed: int = 0) -> Discriminator:
    torch.manual_seed(seed)
    D = Discriminator(audio_shape=AUDIO, video_shape=VIDEO, width=8, time_dim=16, head_hidden=16).double()
    with torch.no_grad():  # FiLM starts at identity; perturb it so the time path is exercised too
        for name, p in D.named_parameters():
            if "to_scale_shift" in name:
                p.normal_(0, 0.2)
    return D


def inputs(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, *AUDIO, generator=g, dtype=torch.float64)
    v = torch.randn(n, *VIDEO, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (n,), generator=g)
    return a, v, t


def test_default_discriminator_is_small_and_maps_pairs_to_logits():
    D = Discriminator(audio_shape=(1, 32, 32), video_shape=(8, 3, 16, 16))
    n_params = sum(p.numel() for p in D.parameters())
    assert 50_000 < n_params <= 150_000, n_params          # 134,210 with the defaults
    a, v = torch.randn(3, 1, 32, 32), torch.randn(3, 8, 3, 16, 16)
    logit, parts = D(a, v, torch.tensor([0, 500, 999]), return_parts=True)
    assert logit.shape == (3,) and set(parts) == {"temporal", "semantic"}
    torch.testing.assert_close(parts["temporal"] + parts["semantic"], logit)


def test_other_fused_lengths_and_time_sizes_work():
    D = Discriminator(audio_shape=(2, 20, 12), video_shape=(5, 4, 12, 12), width=8, time_dim=16,
                      num_frames_fused=7)
    assert D(torch.randn(2, 2, 20, 12), torch.randn(2, 5, 4, 12, 12), torch.tensor([3, 4])).shape == (2,)


def _central_differences(D, a, v, t, h=1e-6, *, which: str, direction: torch.Tensor) -> torch.Tensor:
    """Per-sample directional derivative of logit D along ``direction`` by central differences."""
    plus = (a + h * direction, v) if which == "a" else (a, v + h * direction)
    minus = (a - h * direction, v) if which == "a" else (a, v - h * direction)
    with torch.no_grad():
        return (D(*plus, t) - D(*minus, t)) / (2 * h)


@pytest.mark.parametrize("kind", ["conv", "vector"])
def test_input_gradients_match_central_differences(kind):
    if kind == "conv":
        D, (a, v, t) = small_disc(), inputs(3)
    else:
        torch.manual_seed(0)
        D = VectorDiscriminator(audio_dim=5, video_dim=7, hidden=16, time_dim=8).double()
        g = torch.Generator().manual_seed(3)
        a, v = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g, dtype=torch.float64)
        t = torch.tensor([10, 400, 900])
    logit, grad_a, grad_v = input_gradients(D, a, v, t)
    torch.testing.assert_close(logit, D(a, v, t).detach())
    g = torch.Generator().manual_seed(7)
    for which, x, grad in (("a", a, grad_a), ("v", v, grad_v)):
        for _ in range(3):  # random directions: checks every entry of the gradient at once
            u = torch.randn(x.shape, generator=g, dtype=torch.float64)
            analytic = (grad * u).flatten(1).sum(1)
            numeric = _central_differences(D, a, v, t, which=which, direction=u)
            torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-8)
        for index in (0, x[0].numel() // 2, x[0].numel() - 1):  # single coordinates of sample 1
            u = torch.zeros_like(x)
            u[1].view(-1)[index] = 1.0
            numeric = _central_differences(D, a, v, t, which=which, direction=u)[1]
            torch.testing.assert_close(grad[1].reshape(-1)[index], numeric, rtol=1e-6, atol=1e-9)


def test_gradients_are_per_sample():
    D, (a, v, t) = small_disc(), inputs(2)
    _, ga, gv = input_gradients(D, a, v, t)
    a2, v2 = a.clone(), v.clone()
    a2[1], v2[1] = 3 * a[1], -v[1]
    _, ga2, gv2 = input_gradients(D, a2, v2, t)
    assert torch.equal(ga[0], ga2[0]) and torch.equal(gv[0], gv2[0])
    assert not torch.allclose(ga[1], ga2[1])


def test_input_gradients_keep_no_graph_and_leave_parameters_alone():
    D, (a, v, t) = small_disc(), inputs(2)
    logit, ga, gv = input_gradients(D, a, v, t)
    assert not (logit.requires_grad or ga.requires_grad or gv.requires_grad)
    assert all(p.grad is None for p in D.parameters())
    _, ga, _ = input_gradients(D, a, v, t, create_graph=True)
    ga.square().sum().backward()  # double backward reaches the parameters
    assert sum(float(p.grad.abs().sum()) for p in D.parameters() if p.grad is not None) > 0


def test_residuals_scale_by_each_modalitys_own_sigma():
    D, (a, v, t) = small_disc(), inputs(3)
    alphas_a = DDPMScheduler(beta_schedule="linear").alphas_cumprod.double()
    alphas_v = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    r_a, r_v = residuals(D, a, v, t, alphas_a, alphas_v)
    _, ga, gv = input_gradients(D, a, v, t)
    for r, grad, alphas in ((r_a, ga, alphas_a), (r_v, gv, alphas_v)):
        s = (1 - alphas[t]).sqrt()
        torch.testing.assert_close(r, -s.reshape(-1, *[1] * (grad.ndim - 1)) * grad)
    assert not torch.allclose((1 - alphas_a[t]).sqrt(), (1 - alphas_v[t]).sqrt())


class LinearConcatHead(nn.Module):
    """The separable design to avoid: pooled features, concatenated, one linear layer."""

    def __init__(self):
        super().__init__()
        self.fa, self.fv = nn.Linear(64, 8), nn.Linear(768, 8)
        self.head = nn.Linear(16, 1)

    def forward(self, a, v, t):
        return self.head(torch.cat([torch.tanh(self.fa(a.flatten(1))),
                                    torch.tanh(self.fv(v.flatten(1)))], -1)).squeeze(-1)


def test_fusion_is_non_separable_unlike_a_linear_concat_head():
    a, v, t = inputs(2)
    v_other = torch.randn(v.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    torch.manual_seed(0)
    separable = LinearConcatHead().double()
    _, ga1, _ = input_gradients(separable, a, v, t)
    _, ga2, _ = input_gradients(separable, a, v_other, t)
    torch.testing.assert_close(ga1, ga2, rtol=0, atol=0)   # the video cannot steer the audio

    D = small_disc()
    for part in ("temporal", "semantic", None):
        f = D if part is None else (lambda a_, v_, t_, p=part: D(a_, v_, t_, return_parts=True)[1][p])
        _, ga1, _ = input_gradients(f, a, v, t)
        _, ga2, _ = input_gradients(f, a, v_other, t)
        change = (ga1 - ga2).norm() / ga1.norm()
        assert change > 1e-3, (part, float(change))


def test_semantic_part_is_blind_to_video_frame_order_and_temporal_part_is_not():
    D, (a, v, t) = small_disc(), inputs(2)
    shuffled = v[:, torch.tensor([2, 0, 3, 1])]
    _, p1 = D(a, v, t, return_parts=True)
    _, p2 = D(a, shuffled, t, return_parts=True)
    torch.testing.assert_close(p1["semantic"], p2["semantic"], rtol=1e-12, atol=1e-12)
    assert (p1["temporal"] - p2["temporal"]).abs().max() > 1e-6


def test_wrong_shapes_are_refused_with_the_expected_shape():
    D = small_disc()
    a, v, t = inputs(2)
    with pytest.raises(ValueError, match="audio input has shape"):
        D(a[:, :, :4], v, t)
    with pytest.raises(ValueError, match="video input has shape"):
        D(a, v[:, :2], t)
    with pytest.raises(ValueError, match="batch sizes disagree"):
        D(a, v, t[:1])
    with pytest.raises(ValueError, match="built for 5 and 7"):
        VectorDiscriminator(audio_dim=5, video_dim=7)(torch.zeros(1, 4), torch.zeros(1, 7), torch.zeros(1))
