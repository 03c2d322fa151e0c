"""Discriminator training: negatives, held-out accuracy, and resume after interruption."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from mmdisco.config import DiscriminatorConfig
from mmdisco.guidance.store import load_guide, save_guide
from mmdisco.guidance.train import derangement, negative_batch, train_discriminator
from support.tiny_guides import AUDIO, VIDEO, Interrupt, bases, data, interrupt_at, make_d


CFG = DiscriminatorConfig(steps=12, batch_size=8, checkpoint_every=4, log_every=4, eval_every=8,
                  heldout=8, denoise_weight=0.1)


def test_derangement_has_no_fixed_point():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 10, 101):
        p = derangement(n, g)
        assert sorted(p.tolist()) == list(range(n)) and (p != torch.arange(n)).all()
    with pytest.raises(ValueError):
        derangement(1, g)


@pytest.mark.parametrize("kind", ["generated", "shuffled", "both"])
def test_negative_batches_are_of_the_asked_kind(kind):
    real_a, real_v = torch.arange(20.0)[:, None], 100 + torch.arange(20.0)[:, None]
    fake_a, fake_v = -1 - torch.arange(30.0)[:, None], -100 - torch.arange(30.0)[:, None]
    cfg = dataclasses.replace(CFG, negatives=kind)
    a, v, prompt = negative_batch(cfg, real_a, real_v, fake_a, fake_v, 10,
                                  torch.Generator().manual_seed(0))
    assert prompt is None
    is_fake = a[:, 0] < 0
    expected = {"generated": 10, "shuffled": 0, "both": 5}[kind]
    assert int(is_fake.sum()) == expected
    # fakes keep their bank pairing; shuffled real pairs never keep their own video
    assert torch.equal(v[is_fake, 0], a[is_fake, 0] * 1 - 99)
    assert (v[~is_fake, 0] - 100 != a[~is_fake, 0]).all()


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    base_a, base_v = bases()
    real_a, real_v = data(40)
    fake_a, fake_v = data(40, seed=1)
    kw = dict(real_a=real_a, real_v=real_v, fake_a=fake_a, fake_v=fake_v, seed=7)
    # uninterrupted
    d_full = make_d()
    full = train_discriminator(d_full, base_a, base_v, cfg=CFG, checkpoint_dir=tmp_path / "a", **kw)
    assert full["resumed_from"] == 0
    # held-out accuracy at every evaluation timestep, each a fraction of the 8 held-out pairs
    accs = [v for k, v in full.items() if k.startswith("acc_")]
    assert len(accs) == 15 and all(round(8 * a) == 8 * a for a in accs)
    # interrupted at step 8 by raising from the logger, which runs before that step's
    # checkpoint is written: the last checkpoint is step 4's
    with pytest.raises(Interrupt):
        train_discriminator(make_d(), base_a, base_v, cfg=CFG, checkpoint_dir=tmp_path / "b",
                            log=interrupt_at(8), **kw)
    assert (tmp_path / "b" / "meta.json").is_file()
    d_resumed = make_d()
    resumed = train_discriminator(d_resumed, base_a, base_v, cfg=CFG,
                                  checkpoint_dir=tmp_path / "b", **kw)
    assert resumed["resumed_from"] == 4
    for (k, p), q in zip(d_full.state_dict().items(), d_resumed.state_dict().values()):
        assert torch.equal(p, q), k
    # a checkpoint from another config is ignored, not resumed
    other = train_discriminator(make_d(), base_a, base_v, cfg=dataclasses.replace(CFG, lr=5e-4),
                                checkpoint_dir=tmp_path / "b", **kw)
    assert other["resumed_from"] == 0


def test_training_separates_real_from_fake_and_saves(tmp_path):
    base_a, base_v = bases()
    # real clips rise along time, fakes fall: easy to tell apart, even after normalisation
    ramp_a = torch.linspace(-1, 1, AUDIO[1])[None, None, :, None].expand(64, *AUDIO)
    ramp_v = torch.linspace(-1, 1, VIDEO[0])[None, :, None, None, None].expand(64, *VIDEO)
    real_a, real_v, fake_a, fake_v = ramp_a, ramp_v, -ramp_a, -ramp_v
    D = make_d()
    cfg = dataclasses.replace(CFG, steps=100, denoise_weight=0.0, lr=3e-3, eval_every=100,
                              log_every=50, checkpoint_every=100)
    out = train_discriminator(D, base_a, base_v, real_a=real_a, real_v=real_v, fake_a=fake_a,
                              fake_v=fake_v, cfg=cfg, checkpoint_dir=tmp_path / "c", seed=0)
    assert out["acc_real_t100"] > 0.8 and out["acc_fake_t100"] > 0.8
    save_guide(D, tmp_path)
    again = load_guide(tmp_path)
    a_t, v_t, t = real_a[:4], real_v[:4], torch.full((4,), 100)
    assert torch.equal(again(a_t, v_t, t), D(a_t, v_t, t))
    assert not any(p.requires_grad for p in again.parameters())
