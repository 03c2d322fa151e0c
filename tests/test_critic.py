"""The contrastive critic: InfoNCE, non-separable scores, learning a pairing, resume, storage."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import DDPMScheduler

from mmdisco.config import ConfigError, CriticConfig, build
from mmdisco.guidance.critic import Critic, info_nce, retrieval_accuracy, train_critic
from mmdisco.guidance.discriminator import input_gradients
from mmdisco.guidance.store import load_guide, save_guide
from support.tiny_guides import Interrupt, interrupt_at

AUDIO, VIDEO = (1, 8, 8), (4, 3, 8, 8)
ALPHAS = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()
CFG = CriticConfig(steps=12, batch_size=8, checkpoint_every=4, log_every=4, eval_every=8,
                   heldout=8, t_min=0, t_max=600)


def make_critic(seed: int = 1, **kw) -> Critic:
    torch.manual_seed(seed)
    return Critic(audio_shape=AUDIO, video_shape=VIDEO, width=8, time_dim=16, dim=16, **kw)


def paired_world(n: int, classes: int = 4, seed: int = 0):
    """Audio and video share a class: audio is bright in one band of rows, video in one colour
    channel of every frame (the class), each clip with its own random texture."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(classes, (n,), generator=g)
    a = 0.1 * torch.randn((n, *AUDIO), generator=g)
    v = 0.1 * torch.randn((n, *VIDEO), generator=g)
    for i, k in enumerate(labels.tolist()):
        a[i, :, :, 2 * k:2 * k + 2] += 1.0
        v[i, :, k % 3] += 1.0 if k < 3 else -1.0
    return a, v, labels


def test_info_nce_is_low_for_a_dominant_diagonal_and_log_n_for_constant_scores():
    n = 6
    assert float(info_nce(torch.zeros(n, n))) == pytest.approx(float(torch.log(torch.tensor(6.0))))
    assert float(info_nce(20 * torch.eye(n))) < 1e-6


def test_scores_are_the_diagonal_and_the_audio_gradient_depends_on_the_video():
    C = make_critic()
    a, v, _ = paired_world(5)
    t = torch.full((5,), 400)
    S = C.scores(a, v, t)
    torch.testing.assert_close(torch.diagonal(S), C(a, v, t))
    assert float(S.detach().abs().max()) <= 1 / C.temperature + 1e-5          # cosine / τ
    _, ga1, _ = input_gradients(C, a, v, t)
    _, ga2, _ = input_gradients(C, a, v.flip(0), t)
    assert (ga1 - ga2).abs().max() > 1e-6                             # non-separable


def test_training_learns_the_pairing_above_chance(tmp_path):
    a, v, labels = paired_world(160)
    C = make_critic()
    cfg = dataclasses.replace(CFG, steps=300, batch_size=32, lr=3e-3, heldout=32, log_every=50,
                              eval_every=300, checkpoint_every=300)
    out = train_critic(C, real_a=a, real_v=v, alphas_a=ALPHAS, alphas_v=ALPHAS, cfg=cfg,
                       checkpoint_dir=tmp_path / "c", seed=0)
    assert out["heldout"] == 32 and out["steps"] == 300
    held = retrieval_accuracy(C, a[:64], v[:64], ALPHAS, ALPHAS, seed=3, labels=labels[:64])
    assert held["label_match_t300"] > 0.8        # chance: about 1/4
    (tmp_path / "saved").mkdir()
    save_guide(C, tmp_path / "saved")
    again = load_guide(tmp_path / "saved")
    t = torch.full((4,), 300)
    assert isinstance(again, Critic) and torch.equal(again(a[:4], v[:4], t), C(a[:4], v[:4], t))


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    a, v, _ = paired_world(40)
    kw = dict(real_a=a, real_v=v, alphas_a=ALPHAS, alphas_v=ALPHAS, cfg=CFG, seed=5)
    full = make_critic()
    assert train_critic(full, checkpoint_dir=tmp_path / "a", **kw)["resumed_from"] == 0
    with pytest.raises(Interrupt):
        train_critic(make_critic(), checkpoint_dir=tmp_path / "b", log=interrupt_at(8), **kw)
    resumed = make_critic()
    # killed while logging step 8, before its checkpoint: resumes from step 4
    assert train_critic(resumed, checkpoint_dir=tmp_path / "b", **kw)["resumed_from"] == 4
    for (k, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), k


def test_bad_settings_are_refused_before_training(tmp_path):
    a, v, _ = paired_world(20)
    with pytest.raises(ValueError, match="heldout"):
        train_critic(make_critic(), real_a=a, real_v=v, alphas_a=ALPHAS, alphas_v=ALPHAS,
                     cfg=dataclasses.replace(CFG, heldout=16), checkpoint_dir=tmp_path, seed=0)
    with pytest.raises(ValueError, match="t_max"):
        train_critic(make_critic(), real_a=a, real_v=v, alphas_a=ALPHAS[:500], alphas_v=ALPHAS[:500],
                     cfg=CFG, checkpoint_dir=tmp_path, seed=0)
    with pytest.raises(ConfigError, match="critic.t_max"):
        build(CriticConfig, {"t_min": 700, "t_max": 600}, "critic")
    with pytest.raises(ValueError, match="temperature"):
        make_critic(temperature=0.0)
