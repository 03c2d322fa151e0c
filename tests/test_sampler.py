"""The joint sampler: scale 0 is independent sampling bit for bit, noise draws never depend on D."""
from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from einops import rearrange
from torch import nn

from mmdisco.guidance.critic import Critic
from mmdisco.guidance.discriminator import Discriminator
from mmdisco.guidance.sampler import (Guide, GuidedEps, SamplerSettings, StepTimer, renoise,
                                      sample_joint, sample_single)
from mmdisco.seeds import modality_generators

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


def singles(base_a, base_v, seed, settings, **kw):
    gen_a, gen_v = modality_generators(seed)
    a = sample_single(base_a, settings, generator=gen_a, cond=kw.pop("cond_a", None), **kw)
    v = sample_single(base_v, settings, generator=gen_v, cond=kw.pop("cond_v", None), **kw)
    return a, v


SETTINGS = [("ddim", 0.0), ("ddim", 0.7), ("ddpm", 0.0)]


@pytest.mark.parametrize("kind,eta", SETTINGS)
@pytest.mark.parametrize("with_disc", [True, False])
def test_scale_zero_is_independent_sampling_bit_for_bit(kind, eta, with_disc):
    base_a, base_v = bases()
    cond_a = torch.linspace(-0.1, 0.1, 5)
    settings = SamplerSettings(steps=6, kind=kind, eta=eta)
    common = dict(num_samples=5, batch_size=3)
    timer = StepTimer()
    guide = Guide(disc() if with_disc else None, 0.0, 0.0)
    a, v = sample_joint(base_a, base_v, settings, guides=[guide], generators=modality_generators(11),
                        cond_a=cond_a, timer=timer, **common)
    a_ref, v_ref = singles(base_a, base_v, 11, settings, cond_a=cond_a, **common)
    assert a.shape == (5, *AUDIO) and v.shape == (5, *VIDEO)
    assert torch.equal(a, a_ref) and torch.equal(v, v_ref)
    assert timer.guidance_passes == 0 and timer.guidance_s == 0.0


@pytest.mark.parametrize("kind,eta", SETTINGS)
def test_guiding_only_the_video_leaves_the_audio_untouched_and_draws_the_same_noise(kind, eta):
    base_a, base_v = bases()
    settings = SamplerSettings(steps=5, kind=kind, eta=eta)
    common = dict(num_samples=4, batch_size=4)
    gens, timer = modality_generators(3), StepTimer()
    a, v = sample_joint(base_a, base_v, settings, guides=[Guide(disc(), 0.0, 3.0)], generators=gens,
                        timer=timer, **common)
    ref_gens = modality_generators(3)
    a_ref = sample_single(base_a, settings, generator=ref_gens[0], **common)
    v_ref = sample_single(base_v, settings, generator=ref_gens[1], **common)
    assert torch.equal(a, a_ref)
    assert (v - v_ref).abs().max() > 1e-4                  # the video was steered
    assert timer.guidance_passes == 5
    for g, g_ref in zip(gens, ref_gens):                    # identical number of draws
        assert torch.equal(g.get_state(), g_ref.get_state())


def test_guidance_moves_both_modalities():
    base_a, base_v = bases()
    settings = SamplerSettings(steps=4, kind="ddpm")
    a0, v0 = sample_joint(base_a, base_v, settings, guides=[Guide(disc(), 0, 0)], num_samples=3,
                          generators=modality_generators(0))
    a1, v1 = sample_joint(base_a, base_v, settings, guides=[Guide(disc(), 2, 2)], num_samples=3,
                          generators=modality_generators(0))
    assert (a1 - a0).abs().max() > 1e-4 and (v1 - v0).abs().max() > 1e-4


class Known(nn.Module):
    """A guide whose input gradients are known: logit = Σ 2a − Σ v, so ∇_a = 2, ∇_v = −1."""

    def forward(self, a, v, t):
        return 2 * a.flatten(1).sum(1) - v.flatten(1).sum(1)


class Flat:
    """A base with ε = 1, no constraint and a flat schedule (σ_t = 1 at t = 0)."""

    def __init__(self, modality, shape):
        self.modality, self.latent_shape = modality, shape

    def eps(self, x, t, cond=None):
        return torch.ones_like(x)

    def alphas_cumprod(self):
        return torch.zeros(10, dtype=torch.float64)


def test_guided_eps_adds_scaled_residuals_and_is_exact_at_zero():
    """ε̂ = ε + Σ s·r with r = −σ ∇ logit; a zero scale returns the base's ε tensor itself."""
    bases_ = (Flat("audio", (3,)), Flat("video", (4,)))
    xs, t = (torch.zeros(2, 3), torch.zeros(2, 4)), 0
    eps, r, hat = GuidedEps(bases_, [Guide(Known(), 0.5, 3.0)])(xs, t, (None, None))
    torch.testing.assert_close(hat[0], torch.full((2, 3), 1.0 - 0.5 * 2))
    torch.testing.assert_close(hat[1], torch.full((2, 4), 1.0 + 3.0 * 1))
    model = GuidedEps(bases_, [Guide(Known(), 0.0, 3.0), Guide(None, 5.0, 5.0)])
    eps, r, hat = model(xs, t, (None, None))
    assert hat[0] is eps[0] and r[0] is None and r[1] is not None
    with pytest.raises(ValueError, match="finite"):
        Guide(Known(), float("nan"), 1.0)
    assert GuidedEps(bases_, [Guide(None, 1.0, 1.0), Guide(Known(), 0.0, 0.0)]).guides == ()


def test_timing_and_callback_report_each_step():
    base_a, base_v = bases()
    seen, timer = [], StepTimer()
    sample_joint(base_a, base_v, SamplerSettings(steps=3), guides=[Guide(disc(), 1.0, 0.5)],
                 num_samples=5, batch_size=2, generators=modality_generators(0), timer=timer,
                 callback=seen.append)
    assert timer.base_passes == 2 * 3 * 3 and timer.guidance_passes == 3 * 3
    assert timer.guidance_s > 0 and timer.base_s > 0
    assert timer.total_s >= timer.base_s + timer.guidance_s
    assert len(seen) == 9 and [s["i"] for s in seen[:3]] == [0, 1, 2]
    assert seen[0]["t"] == 999 and seen[0]["r"][0].shape == (2, *AUDIO)
    assert seen[-1]["x"][0].shape == (1, *AUDIO) and seen[-1]["eps"][1].shape == (1, *VIDEO)
    cost = timer.per_pass_cost()
    assert set(cost) == {"total_s", "base_pass_s", "base_passes", "guidance_passes",
                         "guidance_pass_s", "guided_step_cost_ratio"}
    assert cost["guided_step_cost_ratio"] > 1


def test_without_a_timer_nothing_is_timed_or_synchronised(monkeypatch):
    """Timing is opt-in: no timer, no clock read and no CUDA synchronisation."""
    import mmdisco.guidance.sampler as sampler

    def refuse(*args, **kwargs):
        raise AssertionError("timed without a timer")

    monkeypatch.setattr(sampler.StepTimer, "phase", refuse)
    base_a, base_v = bases()
    sample_joint(base_a, base_v, SamplerSettings(steps=2), guides=[Guide(disc(), 1.0, 1.0)],
                 num_samples=2, generators=modality_generators(0))
    sample_single(base_a, SamplerSettings(steps=2), num_samples=2, generator=torch.Generator())


def critic():
    torch.manual_seed(3)
    return Critic(audio_shape=AUDIO, video_shape=VIDEO, width=8, time_dim=16, dim=8)


@pytest.mark.parametrize("kind,eta", SETTINGS)
def test_restarts_and_critic_are_inactive_without_guidance(kind, eta):
    base_a, base_v = bases()
    settings = SamplerSettings(steps=5, kind=kind, eta=eta, restarts=3, restart_steps=2)
    timer = StepTimer()
    guides = [Guide(disc(), 0.0, 0.0), Guide(critic(), 0.0, 0.0)]
    a, v = sample_joint(base_a, base_v, settings, guides=guides, num_samples=3,
                        generators=modality_generators(2), timer=timer)
    a_ref, v_ref = singles(base_a, base_v, 2, settings, num_samples=3)
    assert torch.equal(a, a_ref) and torch.equal(v, v_ref)
    assert timer.base_passes == 2 * 5 and timer.guidance_passes == 0


def test_restarts_repeat_the_leading_steps_and_change_the_result():
    base_a, base_v = bases()
    plain, restarted = SamplerSettings(steps=5), SamplerSettings(steps=5, restarts=3, restart_steps=2)

    def run(settings, **kw):
        return sample_joint(base_a, base_v, settings, guides=[Guide(disc(), 1.0, 1.0)], num_samples=3,
                            generators=modality_generators(2), **kw)

    seen, timer = [], StepTimer()
    a0, v0 = run(plain)
    a1, v1 = run(restarted, timer=timer, callback=seen.append)
    # steps 0 and 1 run 1 + 3 times each; the callback still sees each step once
    assert timer.base_passes == 2 * (5 + 2 * 3) and timer.guidance_passes == 5 + 2 * 3
    assert [s["i"] for s in seen] == list(range(5))
    assert (a1 - a0).abs().max() > 1e-4 and (v1 - v0).abs().max() > 1e-4
    a2, v2 = run(restarted)
    assert torch.equal(a1, a2) and torch.equal(v1, v2)                # deterministic
    # restarts never touch the last step (there is no t_prev to re-noise from)
    last = StepTimer()
    run(SamplerSettings(steps=5, restarts=1, restart_steps=99), timer=last)
    assert last.guidance_passes == 5 + 4


def test_renoise_matches_the_forward_process_statistics():
    g = torch.Generator().manual_seed(0)
    x_prev = torch.full((20000,), 2.0)
    x = renoise(x_prev, 0.25, 0.5, g)
    assert float(x.mean()) == pytest.approx(2.0 * 0.5 ** 0.5, abs=0.02)
    assert float(x.std()) == pytest.approx(0.5 ** 0.5, abs=0.02)


def test_critic_residual_is_added_on_its_own_modality_only():
    base_a, base_v = bases()
    settings = SamplerSettings(steps=4)
    # critic on audio only, discriminator off: the video equals independent sampling
    timer = StepTimer()
    guides = [Guide(disc(), 0.0, 0.0), Guide(critic(), 5.0, 0.0)]
    a, v = sample_joint(base_a, base_v, settings, guides=guides, num_samples=3,
                        generators=modality_generators(1), timer=timer)
    a_ref, v_ref = singles(base_a, base_v, 1, settings, num_samples=3)
    assert torch.equal(v, v_ref) and (a - a_ref).abs().max() > 1e-4
    assert timer.guidance_passes == 4                                # only the critic ran
    # both guides: one pass each per step
    both = StepTimer()
    sample_joint(base_a, base_v, settings, guides=[Guide(disc(), 1.0, 1.0), Guide(critic(), 5.0, 0.0)],
                 num_samples=3, generators=modality_generators(1), timer=both)
    assert both.guidance_passes == 8


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
    dist = {}
    for s in (0.0, 0.3):
        a, v = sample_joint(base_a, base_v, SamplerSettings(steps=10, kind=kind),
                            guides=[Guide(Pull(0.8), s, s)], num_samples=8,
                            generators=modality_generators(0))
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
    two = SamplerSettings(steps=2)
    kw = dict(num_samples=2, generators=gens)
    with pytest.raises(ValueError, match="num_train_timesteps"):
        sample_joint(base_a, TinyNetBase(modality="video", latent_shape=VIDEO, seed=2, num_train_timesteps=500),
                     two, **kw)
    with pytest.raises(ValueError, match="audio base first"):
        sample_joint(base_v, base_a, two, **kw)
    with pytest.raises(ValueError, match="unknown sampler kind"):
        SamplerSettings(steps=2, kind="euler")
    with pytest.raises(ValueError, match="eta only applies to DDIM"):
        SamplerSettings(steps=2, kind="ddpm", eta=0.5)
    with pytest.raises(ValueError, match="restarts"):
        SamplerSettings(steps=2, restarts=-1)
    with pytest.raises(ValueError, match="one per sample"):
        sample_joint(base_a, base_v, two, cond_a=torch.zeros(3), **kw)
    with pytest.raises(ValueError, match="pair"):
        sample_joint(base_a, base_v, two, num_samples=2, generators=gens[:1])
    with pytest.raises(ValueError, match="either"):
        sample_joint(base_a, base_v, two, num_samples=2)
    with pytest.raises(ValueError, match="audio and a video base"):
        GuidedEps([base_a], [Guide(disc(), 1.0, 1.0)])
