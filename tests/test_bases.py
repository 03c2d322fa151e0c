"""Tiny base models: exact ε conversion, storage, resumable training, schedulers, config errors."""
from __future__ import annotations

import json

import pytest
import torch

from mmdisco.bases import BaseModel, load_base
from mmdisco.bases.tiny import TinyBase, TinyBaseConfig
from mmdisco.bases.train import (CHECKPOINT_DIR, ema_decay, learning_rate, resolve_data_stats,
                                 train_base)
from mmdisco.config import ConfigError, TrainBaseConfig, build

AUDIO = (1, 8, 8)          # (C, T, M)
VIDEO = (2, 3, 8, 8)       # (F, C, H, W)
A_CFG = TinyBaseConfig(channels=(8, 16), patch=2, norm_groups=4, attn_head_dim=8,
                       data_mean=-0.5, sigma_data=0.2)
V_CFG = TinyBaseConfig(channels=(16, 32), patch=2, norm_groups=8, attn_head_dim=8, attn_levels=(1,),
                       prediction_type="v_prediction")
KINDS = ("edm", "v_prediction", "epsilon", "sample")


def _base(cfg: TinyBaseConfig, shape: tuple[int, ...], seed: int = 0) -> TinyBase:
    torch.manual_seed(seed)
    return TinyBase(cfg, shape).eval()


def _train_cfg(**kw) -> TrainBaseConfig:
    args = dict(model=A_CFG, steps=6, batch_size=4, warmup_steps=2, checkpoint_every=2, log_every=1)
    return TrainBaseConfig(**{**args, **kw})


# --------------------------------------------------------------------------- maths
def _noised(base: TinyBase, shape: tuple[int, ...], t: torch.Tensor):
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand((len(t), *shape), generator=g) * 2 - 1
    noise = torch.randn((len(t), *shape), generator=g)
    ab = base.alphas_cumprod()[t].reshape(-1, *[1] * len(shape))
    a, s = ab.sqrt(), (1 - ab).sqrt()
    return x0, noise, a, s, (a * x0 + s * noise).float()


@pytest.mark.parametrize("cfg,shape", [(A_CFG, AUDIO), (V_CFG, VIDEO)])
def test_v_prediction_converts_exactly_to_eps(cfg, shape):
    base = _base(TinyBaseConfig(**{**cfg.__dict__, "prediction_type": "v_prediction",
                                    "clip_sample": False}), shape)
    assert isinstance(base, BaseModel)
    t = torch.tensor([0, 10, 500, 900, 999])
    x0, noise, a, s, x_t = _noised(base, shape, t)
    # the definition: the true v yields the true noise
    v = (a * noise - s * x0).float()
    torch.testing.assert_close(base.output_to_eps(v, x_t, t), noise.float(), atol=2e-5, rtol=0)
    torch.testing.assert_close(base.target(x0.float(), noise.float(), t), v, atol=1e-6, rtol=0)
    # eps() is the network output pushed through ε = sqrt(ᾱ) v + σ x_t
    with torch.no_grad():
        out, got = base(x_t, t), base.eps(x_t, t)
    torch.testing.assert_close(got.double(), a * out.double() + s * x_t.double(), atol=1e-6, rtol=1e-6)
    assert got.shape == x_t.shape and not torch.allclose(got, out)


def test_clip_sample_keeps_the_implied_x0_in_range_and_is_otherwise_the_identity():
    base = _base(A_CFG, AUDIO)
    assert base.cfg.clip_sample
    t = torch.tensor([5, 200, 600, 950])
    x0, noise, a, s, x_t = _noised(base, AUDIO, t)
    # a consistent ε (implied x̂_0 = x0 inside [-1, 1]) is left alone, up to rounding
    torch.testing.assert_close(base.constrain_eps(noise.float(), x_t, t), noise.float(), atol=1e-4, rtol=0)
    # a wild ε is pulled back until its x̂_0 is clipped, exactly
    wild = noise.float() + 5.0
    fixed = base.constrain_eps(wild, x_t, t)
    x0_hat = (x_t.double() - s * fixed.double()) / a
    assert float(x0_hat.abs().max()) <= 1.0 + 1e-4
    raw = ((x_t.double() - s * wild.double()) / a).clamp(-1, 1)
    torch.testing.assert_close(x0_hat, raw, atol=1e-4, rtol=0)
    # eps() applies it; with clip_sample off it is the identity
    with torch.no_grad():
        e = base.eps(x_t, t)
    assert float(((x_t.double() - s * e.double()) / a).abs().max()) <= 1.0 + 1e-4
    free = _base(TinyBaseConfig(**{**A_CFG.__dict__, "clip_sample": False}), AUDIO)
    assert free.constrain_eps(wild, x_t, t) is wild


@pytest.mark.parametrize("kind", KINDS)
def test_every_target_converts_back_to_the_noise(kind):
    base = _base(TinyBaseConfig(**{**A_CFG.__dict__, "prediction_type": kind}), AUDIO)
    t = torch.tensor([1, 30, 400, 800, 990])
    x0, noise, _, _, x_t = _noised(base, AUDIO, t)
    target = base.target(x0.float(), noise.float(), t)
    torch.testing.assert_close(base.output_to_eps(target, x_t, t), noise.float(), atol=5e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_x0_weight_is_what_the_target_mse_puts_on_x0(kind):
    """Moving x̂_0 by δ (x_t fixed) moves the target by sqrt(W)·δ."""
    base = _base(TinyBaseConfig(**{**A_CFG.__dict__, "prediction_type": kind}), AUDIO)
    t = torch.tensor([5, 300, 700, 950])
    x0, noise, a, s, _ = _noised(base, AUDIO, t)
    x0, noise = x0.double(), noise.double()
    delta = 1e-3 * torch.randn(x0.shape, dtype=torch.float64)
    x0_b, noise_b = x0 + delta, noise - a / s * delta  # same x_t
    base.double()
    moved = base.target(x0_b, noise_b, t) - base.target(x0, noise, t)
    ratio = moved.square().flatten(1).sum(1) / delta.square().flatten(1).sum(1)
    torch.testing.assert_close(ratio, base.x0_weight(t), rtol=1e-6, atol=0)


def test_edm_with_unit_stats_is_minus_v():
    base = _base(TinyBaseConfig(**{**A_CFG.__dict__, "data_mean": 0.0, "sigma_data": 1.0}), AUDIO)
    t = torch.tensor([3, 500, 999])
    x0, noise, a, s, _ = _noised(base, AUDIO, t)
    x0, noise = x0.double(), noise.double()
    torch.testing.assert_close(base.target(x0, noise, t), -(a * noise - s * x0), atol=1e-12, rtol=0)


def test_data_stats_are_estimated_only_when_null():
    latents = torch.full((4, *AUDIO), -0.5)
    latents[:, 0, 0, 0] = 1.0
    cfg = resolve_data_stats(TinyBaseConfig(), latents)
    assert cfg.data_mean == pytest.approx(float(latents.mean()), abs=1e-6)
    assert cfg.sigma_data == pytest.approx(float(latents.std()), abs=1e-5)
    kept = resolve_data_stats(TinyBaseConfig(data_mean=0.25, sigma_data=0.1), latents)
    assert (kept.data_mean, kept.sigma_data) == (0.25, 0.1)


def test_eps_prediction_passes_through():
    base = _base(TinyBaseConfig(**{**A_CFG.__dict__, "prediction_type": "epsilon",
                                    "clip_sample": False}), AUDIO)
    x, t = torch.randn(3, *AUDIO), torch.tensor([1, 2, 3])
    with torch.no_grad():
        assert torch.equal(base.eps(x, t), base(x, t))


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_scheduler_shares_the_schedule(kind):
    base = _base(A_CFG, AUDIO)
    sched = base.make_scheduler(kind)
    assert sched.config.num_train_timesteps == base.num_train_timesteps == 1000
    assert sched.config.prediction_type == "epsilon"
    assert base.alphas_cumprod().dtype == torch.float64
    assert torch.equal(sched.alphas_cumprod.double(), base.alphas_cumprod())
    # cosine schedule: ᾱ falls from ≈1 to ≈0
    assert base.alphas_cumprod()[0] > 0.999 and base.alphas_cumprod()[-1] < 1e-4
    assert base.make_scheduler(kind) is not sched
    with pytest.raises(ValueError, match="ddim"):
        base.make_scheduler("euler")


def test_learning_rate_and_ema_schedules():
    cfg = _train_cfg(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1, ema_decay=0.99)
    assert learning_rate(cfg, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 9) == pytest.approx(1e-3)
    assert learning_rate(cfg, 10) == pytest.approx(1e-3)
    assert learning_rate(cfg, 100) == pytest.approx(1e-4)
    assert learning_rate(cfg, 55) == pytest.approx(5.5e-4)
    assert ema_decay(cfg, 0) == pytest.approx(0.1) and ema_decay(cfg, 10_000) == 0.99


# --------------------------------------------------------------------------- storage
@pytest.mark.parametrize("cfg,shape", [(A_CFG, AUDIO), (V_CFG, VIDEO),
                                       (TinyBaseConfig(arch="unet1d", channels=(8, 16)), AUDIO)])
def test_save_load_round_trip(tmp_path, cfg, shape):
    base = _base(cfg, shape)
    base.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "base.json").read_text())
    assert meta["kind"] == "tiny" and meta["latent_shape"] == list(shape)
    assert meta["prediction_type"] == cfg.prediction_type
    loaded = load_base(tmp_path / "m")
    assert loaded.modality == base.modality and loaded.latent_shape == shape
    assert not any(p.requires_grad for p in loaded.parameters())
    x, t = torch.randn(2, *shape), torch.tensor([3, 700])
    base.requires_grad_(False)  # CPU kernels may round differently for weights needing grads
    with torch.no_grad():
        assert torch.equal(loaded.eps(x, t), base.eps(x, t))


def test_load_refuses_bad_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="base.json"):
        load_base(tmp_path / "nothing")
    _base(A_CFG, AUDIO).save(tmp_path / "m")
    meta_file = tmp_path / "m" / "base.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "kind": "gigantic"}))
    with pytest.raises(ValueError, match="unknown base kind 'gigantic'"):
        load_base(tmp_path / "m")
    meta_file.write_text(json.dumps({**meta, "weights_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="does not match"):
        load_base(tmp_path / "m")


def test_eps_checks_its_inputs():
    base = _base(A_CFG, AUDIO)
    with pytest.raises(ValueError, match="shape"):
        base.eps(torch.randn(2, 1, 8, 4), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="t must have shape"):
        base.eps(torch.randn(2, *AUDIO), torch.tensor([1]))


# --------------------------------------------------------------------------- training
class Interrupt(Exception):
    pass


def _stop_at(step_to_stop: int):
    def log(step, metrics):
        assert set(metrics) == {"loss", "lr", "grad_norm"}
        if step == step_to_stop:
            raise Interrupt
    return log


@pytest.mark.parametrize("cfg,shape,extra", [(A_CFG, AUDIO, {}), (V_CFG, VIDEO, {"hflip": True})])
def test_resume_after_interruption_is_bit_identical(tmp_path, cfg, shape, extra):
    latents = torch.rand(12, *shape) * 2 - 1
    tcfg = _train_cfg(model=cfg, **extra)
    full = train_base(latents, tcfg, tmp_path / "full", seed=3)
    assert full["resumed_from"] == 0 and full["steps"] == 6
    with pytest.raises(Interrupt):
        train_base(latents, tcfg, tmp_path / "cut", seed=3, log=_stop_at(5))
    assert json.loads((tmp_path / "cut" / CHECKPOINT_DIR / "meta.json").read_text())["step"] == 4
    assert not (tmp_path / "cut" / "base.json").exists()
    resumed = train_base(latents, tcfg, tmp_path / "cut", seed=3)
    assert resumed["resumed_from"] == 4
    a, b = load_base(tmp_path / "full"), load_base(tmp_path / "cut")
    sa, sb = a.unet.state_dict(), b.unet.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    # rerunning a finished run trains nothing and reports the same loss
    again = train_base(latents, tcfg, tmp_path / "full", seed=3)
    assert again["resumed_from"] == 6 and again["final_loss"] == full["final_loss"]
    sc = load_base(tmp_path / "full").unet.state_dict()
    assert all(torch.equal(sa[k], sc[k]) for k in sa)
    # another seed gives other weights, and never resumes this checkpoint: it starts afresh
    other = train_base(latents, tcfg, tmp_path / "other", seed=4)
    assert other["final_loss"] != full["final_loss"]
    again_other = train_base(latents, tcfg, tmp_path / "full", seed=4)
    assert again_other["resumed_from"] == 0 and again_other["final_loss"] == other["final_loss"]


def test_saved_model_is_the_ema(tmp_path):
    latents = torch.rand(8, *AUDIO) * 2 - 1
    train_base(latents, _train_cfg(steps=3, warmup_steps=1), tmp_path, seed=0)
    state = torch.load(tmp_path / CHECKPOINT_DIR / "state.pt", weights_only=True)
    saved = load_base(tmp_path).unet.state_dict()
    assert all(torch.equal(saved[k], state["ema"][k]) for k in saved)
    assert any(not torch.equal(saved[k], state["model"][k]) for k in saved)


def test_training_reduces_the_loss(tmp_path):
    latents = torch.full((16, *AUDIO), -1.0)
    latents[:, :, :, 2] = 1.0  # one bright mel bin
    losses = []
    cfg = _train_cfg(steps=60, warmup_steps=5, batch_size=16, checkpoint_every=60,
                     log_every=10, lr=3e-3)
    train_base(latents, cfg, tmp_path, seed=0, log=lambda s, m: losses.append(m["loss"]))
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize("raw,key", [
    ({"model": {"arch": "transformer"}}, "bases.audio.model.arch"),
    ({"model": {"prediction_type": "x0"}}, "bases.audio.model.prediction_type"),
    ({"model": {"sigma_data": 0.0}}, "bases.audio.model.sigma_data"),
    ({"model": {"channels": [64, 100]}}, "bases.audio.model.channels[1]"),
    ({"model": {"attn_levels": [5]}}, "bases.audio.model.attn_levels"),
    ({"model": {"patch": 0}}, "bases.audio.model.patch"),
    ({"lr": -1.0}, "bases.audio.lr"),
    ({"ema_decay": 1.5}, "bases.audio.ema_decay"),
    ({"steps": 10, "warmup_steps": 20}, "bases.audio.warmup_steps"),
    ({"checkpoint_every": 0}, "bases.audio.checkpoint_every"),
    ({"batchsize": 8}, "bases.audio.batchsize"),
])
def test_bad_config_names_the_key(raw, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace(".", r"\.")):
        build(TrainBaseConfig, raw, "bases.audio")


def test_attention_head_dim_is_checked_only_where_attention_is():
    build(TinyBaseConfig, {"channels": [48, 64], "attn_head_dim": 32}, "m")  # mid only: 64
    with pytest.raises(ConfigError, match=r"m\.attn_head_dim \(32\).*\[48, 64\]"):
        build(TinyBaseConfig, {"channels": [48, 64], "attn_head_dim": 32, "attn_levels": [0]}, "m")


def test_config_built_in_code_is_checked_too(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.layers_per_block"):
        TinyBase(TinyBaseConfig(layers_per_block=0), VIDEO)
    with pytest.raises(ConfigError, match="divisible by 16"):
        TinyBase(TinyBaseConfig(channels=(16, 32, 32), patch=4, norm_groups=8,
                                attn_head_dim=8), VIDEO)
    with pytest.raises(ConfigError, match="'unet1d' is for audio"):
        TinyBase(TinyBaseConfig(arch="unet1d", channels=(8, 16)), VIDEO)
    with pytest.raises(ConfigError, match="hflip"):
        train_base(torch.zeros(4, *AUDIO), _train_cfg(hflip=True), tmp_path, seed=0)


@pytest.mark.parametrize("cfg,shape", [
    (TinyBaseConfig(channels=(8, 16), patch=2, norm_groups=4, mid_attention=False), AUDIO),
    (TinyBaseConfig(arch="unet1d", channels=(8, 16)), AUDIO),
    (TinyBaseConfig(channels=(8, 16), patch=2, norm_groups=4, mid_attention=False), VIDEO),
    (TinyBaseConfig(channels=(8, 16), patch=4, norm_groups=4, mid_attention=False,
                    frame_layout="tiles"), (8, 3, 8, 8)),
])
def test_unet_layouts_round_trip(cfg, shape):
    """Folding a latent into the UNet's layout and back is the identity; tiles keep frames whole."""
    from einops import rearrange

    from mmdisco.bases.tiny import unet_layout
    pattern, axes = unet_layout(cfg, shape)
    x = torch.randn(2, *shape)
    folded = rearrange(x, pattern, **axes)
    lhs, rhs = pattern.split(" -> ")
    assert torch.equal(rearrange(folded, f"{rhs} -> {lhs}", **axes), x)
    unet = _base(cfg, shape).unet
    assert folded.shape[1] == unet.config.in_channels == unet.config.out_channels
    if cfg.frame_layout == "tiles":  # 8 frames → a 2 × 4 grid of 8 × 8 frames, 4 × 4 patches
        assert folded.shape[2:] == (2 * 2, 4 * 2)
        assert torch.equal(folded[0, :, 2:4, 0:2], rearrange(x[0, 4], "c (h a) (w b) -> (c a b) h w", a=4, b=4))
