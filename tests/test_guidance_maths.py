"""The method's maths in the analytic Gaussian world: closed forms, the loss, training and sampling."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import MultivariateNormal

from mmdisco.guidance.discriminator import input_gradients, residuals
from support.gaussian import GaussianBase, GaussianWorld, VectorDiscriminator
from mmdisco.guidance.loss import DiscriminatorLoss, forward_noise
from mmdisco.guidance.sampler import Guide, SamplerSettings, sample_joint
from mmdisco.seeds import modality_generators

DA, DV = 2, 3


@pytest.fixture(scope="module")
def world() -> GaussianWorld:
    """Strongly coupled (ρ = 0.9); the two modalities use different noise schedules."""
    return GaussianWorld.correlated(DA, DV, rho=0.9, generator=torch.Generator().manual_seed(0),
                                    beta_schedule_v="squaredcos_cap_v2")


def noisy_real_pairs(world, n, t_value, generator):
    a0, v0 = world.sample(n, generator)
    t = torch.full((n,), t_value)
    a = forward_noise(a0, t, torch.randn(a0.shape, generator=generator, dtype=torch.float64),
                      world.base_a.alphas_cumprod())
    v = forward_noise(v0, t, torch.randn(v0.shape, generator=generator, dtype=torch.float64),
                      world.base_v.alphas_cumprod())
    return a, v, t


# --------------------------------------------------------------------------- closed forms
def _mvn_log_prob(x, cov):
    return MultivariateNormal(torch.zeros(x.shape[-1], dtype=torch.float64), cov).log_prob(x)


def test_closed_form_log_r_is_the_pointwise_log_density_ratio(world):
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 7, 7, 300, 640, 999])
    a, v = torch.randn(6, DA, generator=g, dtype=torch.float64), torch.randn(6, DV, generator=g, dtype=torch.float64)
    K = world.noisy_covariance(t)
    expected = (_mvn_log_prob(torch.cat([a, v], 1), K) - _mvn_log_prob(a, K[:, :DA, :DA])
                - _mvn_log_prob(v, K[:, DA:, DA:]))
    torch.testing.assert_close(world.log_r(a, v, t), expected, rtol=1e-10, atol=1e-12)
    assert torch.allclose(K[0], world.covariance, atol=1e-3)       # ᾱ_0 ≈ 1: the data itself
    # the same t for the whole batch (the sampler's case) takes a shortcut: same numbers
    same_t = torch.full((6,), 300)
    torch.testing.assert_close(world.log_r(a, v, same_t),
                               torch.stack([world.log_r(a[i:i + 1], v[i:i + 1], same_t[:1])[0] for i in range(6)]))


def test_closed_form_gradient_matches_autograd(world):
    g = torch.Generator().manual_seed(2)
    t = torch.tensor([3, 150, 500, 900])
    a, v = torch.randn(4, DA, generator=g, dtype=torch.float64), torch.randn(4, DV, generator=g, dtype=torch.float64)
    _, ga, gv = input_gradients(world.residual_module(), a, v, t)
    ga_cf, gv_cf = world.grad_log_r(a, v, t)
    torch.testing.assert_close(ga, ga_cf)
    torch.testing.assert_close(gv, gv_cf)


def test_gaussian_base_is_the_exact_marginal_eps_predictor(world):
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([10, 400, 980])
    x = torch.randn(3, DV, generator=g, dtype=torch.float64).requires_grad_(True)
    ab = world.base_v.alphas_cumprod()[t]
    K = ab[:, None, None] * world.covariance[DA:, DA:] + (1 - ab)[:, None, None] * torch.eye(DV, dtype=torch.float64)
    (score,) = torch.autograd.grad(_mvn_log_prob(x, K).sum(), x)
    torch.testing.assert_close(world.base_v.eps(x.detach(), t), -(1 - ab).sqrt()[:, None] * score)


def test_base_eps_plus_residual_is_the_joint_eps(world):
    """``ε_A − σ^a ∇_a log r = σ^a [K_t^{-1} x]_a``: the method's decomposition, exactly."""
    g = torch.Generator().manual_seed(4)
    t = torch.tensor([20, 250, 600, 950])
    a, v = torch.randn(4, DA, generator=g, dtype=torch.float64), torch.randn(4, DV, generator=g, dtype=torch.float64)
    r_a, r_v = residuals(world.residual_module(), a, v, t,
                         world.base_a.alphas_cumprod(), world.base_v.alphas_cumprod())
    x = torch.cat([a, v], 1)
    K = world.noisy_covariance(t)
    sig = torch.cat([(1 - world.base_a.alphas_cumprod()[t])[:, None].expand(-1, DA),
                     (1 - world.base_v.alphas_cumprod()[t])[:, None].expand(-1, DV)], 1).sqrt()
    joint = sig * torch.linalg.solve(K, x.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(world.base_a.eps(a, t) + r_a, joint[:, :DA])
    torch.testing.assert_close(world.base_v.eps(v, t) + r_v, joint[:, DA:])


def test_bad_worlds_are_refused():
    with pytest.raises(ValueError, match="positive definite"):
        GaussianWorld(torch.tensor([[1.0, 2.0], [2.0, 1.0]]), 1)
    with pytest.raises(ValueError, match="audio_dim"):
        GaussianWorld(torch.eye(3), 3)
    with pytest.raises(ValueError, match="rho"):
        GaussianWorld.correlated(2, 2, rho=1.0, generator=torch.Generator())


# --------------------------------------------------------------------------- the loss
class ScaledBase(nn.Module):
    """A base with a trainable parameter (the exact predictor times ``gain``) that counts its calls."""

    def __init__(self, exact: GaussianBase):
        super().__init__()
        self.exact, self.gain, self.calls = exact, nn.Parameter(torch.ones((), dtype=torch.float64)), 0
        self.modality, self.latent_shape = exact.modality, exact.latent_shape
        self.num_train_timesteps = exact.num_train_timesteps

    def eps(self, x_t, t, cond=None):
        self.calls += 1
        return self.gain * self.exact.eps(x_t, t)

    def alphas_cumprod(self):
        return self.exact.alphas_cumprod()

    def make_scheduler(self, kind):
        return self.exact.make_scheduler(kind)


class ZeroLogit(nn.Module):
    """``logit ≡ 0`` with a parameter, so losses can be backpropagated."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, a_t, v_t, t):
        return self.w * (a_t.sum(1) + v_t.sum(1))


def batch(world, seed, n=64):
    g = torch.Generator().manual_seed(seed)
    return (*world.sample(n, g), *world.sample_independent(n, g))


def test_bce_of_an_undecided_discriminator_is_two_log_two(world):
    base_a, base_v = world.bases()
    loss, stats = DiscriminatorLoss(0.0)(ZeroLogit(), base_a, base_v, *batch(world, 0),
                                         torch.Generator().manual_seed(1))
    assert math.isclose(float(loss.detach()), 2 * math.log(2), rel_tol=1e-12)
    assert stats["bce"] == float(loss.detach()) and stats["dsm"] == 0.0
    assert stats["acc_real"] == 0.0 and stats["acc_fake"] == 0.0


def test_zero_denoise_weight_never_calls_the_bases_and_adds_nothing(world):
    base_a, base_v = ScaledBase(world.base_a), ScaledBase(world.base_v)
    torch.manual_seed(0)
    D = VectorDiscriminator(audio_dim=DA, video_dim=DV, hidden=16, time_dim=8).double()
    loss, stats = DiscriminatorLoss(0.0)(D, base_a, base_v, *batch(world, 0), torch.Generator().manual_seed(1))
    assert base_a.calls == base_v.calls == 0
    assert stats["dsm"] == 0.0 and stats["loss"] == stats["bce"] == float(loss.detach())
    assert 0.0 <= stats["acc_real"] <= 1.0


def test_denoising_term_reaches_the_discriminator_through_a_double_backward_and_spares_the_bases(world):
    base_a, base_v = ScaledBase(world.base_a), ScaledBase(world.base_v)
    grads, stats = {}, {}
    for lam in (0.0, 2.0):
        torch.manual_seed(0)
        D = VectorDiscriminator(audio_dim=DA, video_dim=DV, hidden=16, time_dim=8).double()
        loss, stats[lam] = DiscriminatorLoss(lam)(D, base_a, base_v, *batch(world, 0),
                                                  torch.Generator().manual_seed(1))
        loss.backward()
        grads[lam] = torch.cat([p.grad.flatten() for p in D.parameters()])
    assert base_a.calls == base_v.calls == 1
    assert base_a.gain.grad is None and base_v.gain.grad is None
    assert stats[2.0]["bce"] == stats[0.0]["bce"]          # same draws whatever λ is
    assert math.isclose(stats[2.0]["loss"], stats[2.0]["bce"] + 2.0 * stats[2.0]["dsm"], rel_tol=1e-12)
    assert (grads[2.0] - grads[0.0]).norm() > 1e-3 * grads[0.0].norm()


def test_the_true_log_ratio_lowers_the_denoising_term(world):
    """With exact bases, ``ε_A + r`` is the joint posterior mean of ε: the DSM term must drop."""
    base_a, base_v = world.bases()
    loss_fn = DiscriminatorLoss(1.0)
    data = batch(world, 5, n=2000)
    _, zero = loss_fn(ZeroLogit(), base_a, base_v, *data, torch.Generator().manual_seed(6))
    _, exact = loss_fn(world.residual_module(), base_a, base_v, *data, torch.Generator().manual_seed(6))
    assert exact["dsm"] < 0.9 * zero["dsm"], (exact["dsm"], zero["dsm"])
    assert exact["acc_real"] > 0.5 and exact["acc_fake"] > 0.5


def test_bad_loss_settings_are_refused(world):
    with pytest.raises(ValueError, match="denoise_weight"):
        DiscriminatorLoss(-1.0)
    with pytest.raises(ValueError, match="t_range"):
        DiscriminatorLoss(0.0, t_range=(5, 5))
    with pytest.raises(ValueError, match="exceeds"):
        DiscriminatorLoss(0.0, t_range=(0, 5000))(ZeroLogit(), *world.bases(), *batch(world, 0),
                                                   torch.Generator())


# --------------------------------------------------------------------------- training recovers ∇ log r
@pytest.mark.parametrize("denoise_weight,steps,max_rel", [(0.0, 800, 0.35), (1.0, 500, 0.3)])
def test_training_recovers_the_log_ratio_gradient(world, denoise_weight, steps, max_rel):
    """Real pairs from the joint vs independent draws of the exact marginals (what the bases make)."""
    base_a, base_v = world.bases()
    torch.manual_seed(0)
    D = VectorDiscriminator(audio_dim=DA, video_dim=DV, hidden=64).double()
    opt = torch.optim.Adam(D.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    loss_fn, g = DiscriminatorLoss(denoise_weight), torch.Generator().manual_seed(1)
    for _ in range(steps):
        real_a, real_v = world.sample(256, g)
        fake_a, fake_v = world.sample_independent(256, g)
        loss, stats = loss_fn(D, base_a, base_v, real_a, real_v, fake_a, fake_v, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    g_eval = torch.Generator().manual_seed(2)
    for t_value in (50, 150, 300):
        a, v, t = noisy_real_pairs(world, 2000, t_value, g_eval)
        _, ga, gv = input_gradients(D, a, v, t)
        learned, true = torch.cat([ga, gv], 1), torch.cat(world.grad_log_r(a, v, t), 1)
        cosine = F.cosine_similarity(learned, true).mean()
        rel = (learned - true).norm() / true.norm()
        assert cosine > 0.95 and rel < max_rel, (t_value, float(cosine), float(rel))


# --------------------------------------------------------------------------- sampling reproduces the joint
@pytest.mark.parametrize("kind,steps", [("ddim", 100), ("ddpm", 250)])
def test_guided_sampling_reproduces_the_cross_covariance(world, kind, steps):
    base_a, base_v = world.bases()
    n = 8000
    out = {}
    for scale in (0.0, 1.0):
        a, v = sample_joint(base_a, base_v, SamplerSettings(steps=steps, kind=kind),
                            guides=[Guide(world.residual_module(), scale, scale)], num_samples=n,
                            generators=modality_generators(7), dtype=torch.float64)
        x = torch.cat([a, v], 1)
        out[scale] = x.T @ x / n
    C = world.cross_covariance                                # entries up to 0.74 in size
    # independent sampling: zero cross-covariance within sampling error (s.e. ≈ 0.014 here)
    assert out[0.0][:DA, DA:].abs().max() < 0.06
    # guided at scale 1: the joint's cross-covariance (sampling error + DDIM/DDPM discretisation)
    assert (out[1.0][:DA, DA:] - C).abs().max() < 0.08
    assert (out[1.0] - world.covariance).norm() / world.covariance.norm() < 0.1
    # the marginals are the bases' own in both cases
    for cov in out.values():
        assert (cov[:DA, :DA] - world.covariance[:DA, :DA]).abs().max() < 0.12
        assert (cov[DA:, DA:] - world.covariance[DA:, DA:]).abs().max() < 0.12
