"""The joint sampler: scale 0 is independent sampling bit for bit, noise draws never depend on D."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from einops import rearrange
from torch import nn

from mmdisco.guidance.critic import Critic
from mmdisco.guidance.discriminator import Discriminator
from mmdisco.guidance.sampler import guided_eps, modality_generators, renoise, sample_joint, sample_single

AUDIO, VIDEO = (1, 8, 8), (4, 3, 8, 8)


class TinyNetBase:
    """A real (random, untrained) convolutional ε-network behind the BaseModel protocol."""

    def __init__(self, *, modality: str, latent_shape: tuple[int, ...], seed: int,
                 beta_schedule: str = "linear", num_train_timesteps: int = 1000):
        self.modality, self.latent_shape = modality, latent_shape
        self.num_train_timesteps = num_train_timesteps
        channels = latent_shape[0] * (latent_shape[1] if modality == "video" else 1)
        g = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, channels, 3, padding=1))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
        self.config = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                           clip_sample=False, timestep_spacing="trailing")
        self.calls = 0

    def eps(self, x_t, t, cond=None):
        self.calls += 1
        x = rearrange(x_t, "n f c h w -> n (f c) h w") if self.modality == "video" else x_t
        out = self.net(x) + torch.sin(t.float() / 100)[:, None, None, None]
        if cond is not None:
            out = out + cond[:, None, None, None]
        return out.reshape(x_t.shape)

    def alphas_cumprod(self):
        return DDPMScheduler(**self.config).alphas_cumprod.double()

    def make_scheduler(self, kind):
        return {"ddim": DDIMScheduler, "ddpm": DDPMScheduler}[kind](**self.config)


def bases():
    return (TinyNetBase(modality="audio", latent_shape=AUDIO, seed=1),
            TinyNetBase(modality="video", latent_shape=VIDEO, seed=2, beta_schedule="squaredcos_cap_v2"))


def disc():
    torch.manual_seed(0)
    return Discriminator(audio_shape=AUDIO, video_shape=VIDEO, width=8, time_dim=16, head_hidden=16)


def singles(base_a, base_v, seed, **kw):
    gen_a, gen_v = modality_generators(seed)
    a, _ = sample_single(base_a, generator=gen_a, cond=kw.pop("cond_a", None), **kw)
    v, _ = sample_single(base_v, generator=gen_v, cond=kw.pop("cond_v", None), **kw)
    return a, v


SETTINGS = [("ddim", 0.0), ("ddim", 0.7), ("ddpm", 0.0)]


@pytest.mark.parametrize("kind,eta", SETTINGS)
@pytest.mark.parametrize("with_disc", [True, False])
def test_scale_zero_is_independent_sampling_bit_for_bit(kind, eta, with_disc):
    base_a, base_v = bases()
    cond_a = torch.linspace(-0.1, 0.1, 5)
    common = dict(num_samples=5, steps=6, kind=kind, eta=eta, batch_size=3)
    a, v, timing = sample_joint(base_a, base_v, disc() if with_disc else None, generators=modality_generators(11),
                                scale_a=0.0, scale_v=0.0, cond_a=cond_a, **common)
    a_ref, v_ref = singles(base_a, base_v, 11, cond_a=cond_a, **common)
    assert a.shape == (5, *AUDIO) and v.shape == (5, *VIDEO)
    assert torch.equal(a, a_ref) and torch.equal(v, v_ref)
    assert timing["guidance_passes"] == 0 and timing["guidance_s"] == 0.0


@pytest.mark.parametrize("kind,eta", SETTINGS)
def test_guiding_only_the_video_leaves_the_audio_untouched_and_draws_the_same_noise(kind, eta):
    base_a, base_v = bases()
    common = dict(num_samples=4, steps=5, kind=kind, eta=eta, batch_size=4)
    gens = modality_generators(3)
    a, v, timing = sample_joint(base_a, base_v, disc(), generators=gens, scale_a=0.0, scale_v=3.0, **common)
    ref_gens = modality_generators(3)
    a_ref, _ = sample_single(base_a, generator=ref_gens[0], **common)
    v_ref, _ = sample_single(base_v, generator=ref_gens[1], **common)
    assert torch.equal(a, a_ref)
    assert (v - v_ref).abs().max() > 1e-4                  # the video was steered
    assert timing["guidance_passes"] == 5
    for g, g_ref in zip(gens, ref_gens):                    # identical number of draws
        assert torch.equal(g.get_state(), g_ref.get_state())


def test_guidance_moves_both_modalities():
    base_a, base_v = bases()
    common = dict(num_samples=3, steps=4, kind="ddpm")
    a0, v0, _ = sample_joint(base_a, base_v, disc(), generators=modality_generators(0), scale_a=0, scale_v=0, **common)
    a1, v1, _ = sample_joint(base_a, base_v, disc(), generators=modality_generators(0), scale_a=2, scale_v=2, **common)
    assert (a1 - a0).abs().max() > 1e-4 and (v1 - v0).abs().max() > 1e-4


def test_guided_eps_adds_scaled_residuals_and_is_exact_at_zero():
    ea, ev, ra, rv = torch.ones(2, 3), torch.zeros(2, 4), torch.full((2, 3), 2.0), torch.full((2, 4), -1.0)
    ha, hv = guided_eps(ea, ev, ra, rv, 0.5, 3.0)
    torch.testing.assert_close(ha, torch.full((2, 3), 2.0))
    torch.testing.assert_close(hv, torch.full((2, 4), -3.0))
    ha, hv = guided_eps(ea, ev, ra, None, 0.0, 3.0)
    assert ha is ea and hv is ev


def test_timing_and_callback_report_each_step():
    base_a, base_v = bases()
    seen = []
    _, _, timing = sample_joint(base_a, base_v, disc(), num_samples=5, steps=3, batch_size=2,
                                generators=modality_generators(0), scale_a=1.0, scale_v=0.5,
                                callback=seen.append)
    assert timing["base_passes"] == 2 * 3 * 3 and timing["guidance_passes"] == 3 * 3
    assert timing["guidance_s"] > 0 and timing["base_s"] > 0
    assert timing["total_s"] >= timing["base_s"] + timing["guidance_s"]
    assert len(seen) == 9 and [s["i"] for s in seen[:3]] == [0, 1, 2]
    assert seen[0]["t"] == 999 and seen[0]["r_a"].shape == (2, *AUDIO) and seen[-1]["a_t"].shape == (1, *AUDIO)


def critic():
    torch.manual_seed(3)
    return Critic(audio_shape=AUDIO, video_shape=VIDEO, width=8, time_dim=16, dim=8)


@pytest.mark.parametrize("kind,eta", SETTINGS)
def test_restarts_and_critic_are_inactive_without_guidance(kind, eta):
    base_a, base_v = bases()
    common = dict(num_samples=3, steps=5, kind=kind, eta=eta)
    a, v, timing = sample_joint(base_a, base_v, disc(), generators=modality_generators(2), scale_a=0.0,
                                scale_v=0.0, critic=critic(), critic_scales=(0.0, 0.0), restarts=3,
                                restart_steps=2, **common)
    a_ref, v_ref = singles(base_a, base_v, 2, **common)
    assert torch.equal(a, a_ref) and torch.equal(v, v_ref)
    assert timing["base_passes"] == 2 * 5 and timing["guidance_passes"] == 0


def test_restarts_repeat_the_leading_steps_and_change_the_result():
    base_a, base_v = bases()
    common = dict(num_samples=3, steps=5, kind="ddim", scale_a=1.0, scale_v=1.0)
    seen = []
    a0, v0, plain = sample_joint(base_a, base_v, disc(), generators=modality_generators(2), **common)
    a1, v1, timing = sample_joint(base_a, base_v, disc(), generators=modality_generators(2), restarts=3,
                                  restart_steps=2, callback=seen.append, **common)
    # steps 0 and 1 run 1 + 3 times each; the callback still sees each step once
    assert timing["base_passes"] == 2 * (5 + 2 * 3) and timing["guidance_passes"] == 5 + 2 * 3
    assert [s["i"] for s in seen] == list(range(5))
    assert (a1 - a0).abs().max() > 1e-4 and (v1 - v0).abs().max() > 1e-4
    a2, v2, _ = sample_joint(base_a, base_v, disc(), generators=modality_generators(2), restarts=3,
                             restart_steps=2, **common)
    assert torch.equal(a1, a2) and torch.equal(v1, v2)                # deterministic
    # restarts never touch the last step (there is no t_prev to re-noise from)
    _, _, last = sample_joint(base_a, base_v, disc(), generators=modality_generators(2), restarts=1,
                              restart_steps=99, **common)
    assert last["guidance_passes"] == 5 + 4


def test_renoise_matches_the_forward_process_statistics():
    g = torch.Generator().manual_seed(0)
    x_prev = torch.full((20000,), 2.0)
    x = renoise(x_prev, 0.25, 0.5, g)
    assert float(x.mean()) == pytest.approx(2.0 * 0.5 ** 0.5, abs=0.02)
    assert float(x.std()) == pytest.approx(0.5 ** 0.5, abs=0.02)


def test_critic_residual_is_added_on_its_own_modality_only():
    base_a, base_v = bases()
    common = dict(num_samples=3, steps=4, kind="ddim")
    gens = modality_generators(1)
    # critic on audio only, discriminator off: the video equals independent sampling
    a, v, timing = sample_joint(base_a, base_v, disc(), generators=gens, scale_a=0.0, scale_v=0.0,
                                critic=critic(), critic_scales=(5.0, 0.0), **common)
    a_ref, v_ref = singles(base_a, base_v, 1, **common)
    assert torch.equal(v, v_ref) and (a - a_ref).abs().max() > 1e-4
    assert timing["guidance_passes"] == 4                            # only the critic ran
    # both guides: one pass each per step
    _, _, both = sample_joint(base_a, base_v, disc(), generators=modality_generators(1), scale_a=1.0,
                              scale_v=1.0, critic=critic(), critic_scales=(5.0, 0.0), **common)
    assert both["guidance_passes"] == 8


class Pull(nn.Module):
    """A guide whose logit rises as both latents approach ``target`` (a known direction)."""

    def __init__(self, target: float):
        super().__init__()
        self.target = target

    def forward(self, a, v, t):
        return -((a - self.target) ** 2).flatten(1).sum(1) - ((v - self.target) ** 2).flatten(1).sum(1)


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_guidance_moves_samples_up_the_guide_even_where_x0_is_clipped(kind):
    """Bases that clip x̂_0 (every tiny base) must still follow the guide: a scheduler that clips
    x̂_0 but steps with the unclipped ε would move the samples the OTHER way."""
    from mmdisco.bases import TinyBase, TinyBaseConfig

    torch.manual_seed(0)
    base_a = TinyBase(TinyBaseConfig(arch="unet1d", channels=(8, 16)), AUDIO).eval()
    base_v = TinyBase(TinyBaseConfig(channels=(16, 32), patch=2, norm_groups=8, attn_head_dim=8), VIDEO).eval()
    common = dict(num_samples=8, steps=10, kind=kind, generators=None)
    dist = {}
    for s in (0.0, 0.3):
        common["generators"] = modality_generators(0)
        a, v, _ = sample_joint(base_a, base_v, Pull(0.8), scale_a=s, scale_v=s, **common)
        dist[s] = float((a - 0.8).abs().mean()), float((v - 0.8).abs().mean())
    assert dist[0.3][0] < 0.8 * dist[0.0][0] and dist[0.3][1] < 0.8 * dist[0.0][1], dist


def test_modality_generators_are_deterministic_and_distinct():
    (a1, v1), (a2, v2) = modality_generators(4), modality_generators(4)
    assert torch.equal(a1.get_state(), a2.get_state()) and torch.equal(v1.get_state(), v2.get_state())
    assert not torch.equal(a1.get_state(), v1.get_state())
    assert not torch.equal(modality_generators(5)[0].get_state(), a1.get_state())


def test_bad_arguments_are_refused_with_a_reason():
    base_a, base_v = bases()
    gens = modality_generators(0)
    kw = dict(num_samples=2, steps=2, generators=gens)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        sample_joint(base_a, TinyNetBase(modality="video", latent_shape=VIDEO, seed=2, num_train_timesteps=500),
                     None, **kw)
    with pytest.raises(ValueError, match="audio base first"):
        sample_joint(base_v, base_a, None, **kw)
    with pytest.raises(ValueError, match="unknown sampler kind"):
        sample_joint(base_a, base_v, None, kind="euler", **kw)
    with pytest.raises(ValueError, match="eta only applies to DDIM"):
        sample_joint(base_a, base_v, None, kind="ddpm", eta=0.5, **kw)
    with pytest.raises(ValueError, match="one per sample"):
        sample_joint(base_a, base_v, None, cond_a=torch.zeros(3), **kw)
    with pytest.raises(ValueError, match="pair"):
        sample_joint(base_a, base_v, None, num_samples=2, steps=2, generators=gens[:1])
