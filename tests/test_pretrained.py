"""Pretrained mode, offline: tiny random AudioLDM- and AnimateDiff-style components.

Every component is built from a small config, saved with ``save_pretrained`` in diffusers'
folder layout (the same layout as the hub repositories) and loaded back through the adapters'
from-path code, then run through encode → fakes (``sample_single``) → discriminator training
(``train_discriminator``) → guided sampling (``sample_joint``). The adapters' unguided output
is checked against diffusers' own pipelines (AudioLDMPipeline, AnimateDiffPipeline) for the
same initial noise and prompt embeddings.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import pytest
import torch

from mmdisco.bases import load_base
from mmdisco.bases.pretrained import AnimateDiffBase, AudioLDMBase, prepare_pretrained_base
from mmdisco.config import (AudioEncoderConfig, ConfigError, DiscriminatorConfig, Params,
                            TrainBaseConfig, VideoEncoderConfig, build, load_params)
from mmdisco.encoders import encoder_from_state, make_audio_encoder, make_video_encoder
from mmdisco.guidance.conditional import (BoundCondition, CFGGuide, ConditionalDiscriminator,
                                          joint_condition)
from mmdisco.guidance.discriminator import Discriminator, input_gradients
from mmdisco.guidance.sampler import Guide, SamplerSettings, sample_joint, sample_single
from mmdisco.guidance.store import load_guide, save_guide
from mmdisco.guidance.train import Conditions, train_discriminator
from mmdisco.preset import apply_preset
from mmdisco.seeds import modality_generators
from support.tiny_pretrained import (AUDIO_LATENT, FRAMES, N_CLIP, SIZE, SR_CLIP, VIDEO_LATENT, W_A,
                                     W_V, animatediff_components, audioldm_components,
                                     save_components)

@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    audio, video = audioldm_components(), animatediff_components()
    save_components(audio, root / "audioldm")
    save_components(video, root / "sd15")
    video["motion_adapter"].save_pretrained(root / "motion_adapter")
    return {"root": root, "audio": audio, "video": video, "audioldm": root / "audioldm",
            "sd15": root / "sd15", "adapter": root / "motion_adapter"}


@pytest.fixture(scope="module")
def bases(weights):
    base_a = AudioLDMBase.from_pretrained(weights["audioldm"], latent_shape=AUDIO_LATENT,
                                          guidance_scale=W_A, device="cpu")
    base_v = AnimateDiffBase.from_pretrained(weights["sd15"], motion_adapter=weights["adapter"],
                                             latent_shape=VIDEO_LATENT, guidance_scale=W_V,
                                             device="cpu")
    return base_a, base_v


def world(n: int = 16):
    """Toy real clips: class k has a tone of pitch k and frames of colour k (4 classes)."""
    k = torch.arange(n) % 4
    time = torch.arange(N_CLIP) / SR_CLIP
    audio = 0.5 * torch.sin(2 * math.pi * (300.0 + 400.0 * k[:, None]) * time[None])
    colours = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=torch.uint8)
    video = colours[k][:, None, None, None, :].expand(n, FRAMES, SIZE, SIZE, 3).contiguous()
    prompts = [["a red beep", "a green hum", "a blue tone", "a yellow buzz"][int(i)] for i in k]
    return audio.float(), video, prompts


@pytest.fixture(scope="module")
def encoded(weights):
    audio, video, prompts = world()
    enc_a = make_audio_encoder(AudioEncoderConfig(kind="audioldm", model=str(weights["audioldm"]),
                                                  device="cpu"),
                               sample_rate=SR_CLIP, num_samples=N_CLIP)
    enc_v = make_video_encoder(VideoEncoderConfig(kind="sd_vae", model=str(weights["sd15"]),
                                                  device="cpu"))
    return {"enc_a": enc_a, "enc_v": enc_v, "a": enc_a.encode(audio), "v": enc_v.encode(video),
            "prompts": prompts}


# --------------------------------------------------------------------------- encoders
def test_encoders_shapes_state_and_decode(encoded):
    enc_a, enc_v = encoded["enc_a"], encoded["enc_v"]
    assert tuple(encoded["a"].shape) == (16, *AUDIO_LATENT) == (16, *enc_a.latent_shape)
    assert tuple(encoded["v"].shape) == (16, *VIDEO_LATENT)
    assert torch.isfinite(encoded["a"]).all() and torch.isfinite(encoded["v"]).all()
    # encoding is deterministic (posterior mean) and survives a round trip through state()
    again_a = encoder_from_state(enc_a.state()).encode(world(2)[0])
    again_v = encoder_from_state(enc_v.state()).encode(world(2)[1])
    torch.testing.assert_close(again_a, encoded["a"][:2], rtol=1e-5, atol=1e-6)  # batch of 2 vs 16
    torch.testing.assert_close(again_v, encoded["v"][:2], rtol=1e-5, atol=1e-6)
    wave, frames = enc_a.decode(encoded["a"][:2]), enc_v.decode(encoded["v"][:2])
    assert wave.shape == (2, N_CLIP) and wave.dtype == torch.float32 and torch.isfinite(wave).all()
    assert frames.shape == (2, FRAMES, SIZE, SIZE, 3) and frames.dtype == torch.uint8
    # AudioLDM's front end: 16 kHz, hop 160, 64 Slaney mel bins, log floor 1e-5
    mel = enc_a.log_mel(world(1)[0])
    assert mel.shape == (1, 1, 64, 64) and float(mel.min()) >= math.log(1e-5) - 1e-6
    with pytest.raises(ValueError, match="divisible by 2"):
        enc_v.encode(torch.zeros(1, 2, 15, 15, 3, dtype=torch.uint8))


# --------------------------------------------------------------------------- adapters
def test_schedules_protocol_and_storage(bases, tmp_path):
    base_a, base_v = bases
    a_bar, v_bar = base_a.alphas_cumprod(), base_v.alphas_cumprod()
    assert a_bar.dtype == torch.float64 and len(a_bar) == len(v_bar) == 1000
    assert not torch.allclose(a_bar, v_bar)                     # each keeps its own schedule
    sa, sv = base_a.make_scheduler("ddim"), base_v.make_scheduler("ddim")
    sa.set_timesteps(5), sv.set_timesteps(5)
    assert torch.equal(sa.timesteps, sv.timesteps)              # one shared timestep sequence
    # base.json round trip through the factory
    base_a.save(tmp_path / "a")
    base_v.save(tmp_path / "v")
    again_a, again_v = load_base(tmp_path / "a"), load_base(tmp_path / "v")
    assert (again_a.kind, again_v.kind) == ("audioldm", "animatediff")
    x = torch.randn(2, *AUDIO_LATENT, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([999, 10])
    with torch.no_grad():
        assert torch.equal(base_a.eps(x, t), again_a.eps(x, t))


def test_check_pair_and_timestep_sequences(weights, bases):
    from mmdisco.bases import check_pair
    base_a, base_v = bases
    short = AudioLDMBase(base_a.unet, {**base_a.scheduler_config, "num_train_timesteps": 500},
                         AUDIO_LATENT, uncond=torch.zeros(1, 32))
    with pytest.raises(ValueError, match="same num_train_timesteps"):
        check_pair(short, base_v)
    leading = AudioLDMBase(base_a.unet, base_a.scheduler_config, AUDIO_LATENT,
                           timestep_spacing="leading", uncond=torch.zeros(1, 32))
    with pytest.raises(ValueError, match="different timestep sequences"):
        sample_joint(leading, base_v, SamplerSettings(steps=3), num_samples=1,
                     generators=modality_generators(0))


def test_cfg_matches_the_formula(bases):
    base_a, base_v = bases
    gen = torch.Generator().manual_seed(1)
    for base, shape in ((base_a, AUDIO_LATENT), (base_v, VIDEO_LATENT)):
        x, t = torch.randn(2, *shape, generator=gen), torch.tensor([500, 20])
        cond = base.encode_prompt(["a red beep", "a blue tone"])
        w = base.guidance_scale
        with torch.no_grad():
            got = base.eps(x, t, cond)
            base.guidance_scale = 1.0
            eps_c = base.eps(x, t, cond)
            eps_u = base.eps(x, t, None)
            base.guidance_scale, base.cfg_batch = w, False
            two_pass = base.eps(x, t, cond)
            base.cfg_batch = True
        torch.testing.assert_close(got, eps_u + w * (eps_c - eps_u), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(two_pass, got, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="prompt embeddings"):
        base_a.eps(torch.zeros(1, *AUDIO_LATENT), torch.tensor([1]), torch.zeros(1, 7))


def test_unguided_equals_diffusers_pipelines(weights, bases):
    """Independent sampling through the adapters = diffusers' own pipelines, same noise."""
    from diffusers import AnimateDiffPipeline, AudioLDMPipeline
    base_a, base_v = bases
    steps, prompts = 3, ["a red beep", "a blue tone"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comps = dict(weights["audio"], scheduler=base_a.make_scheduler("ddim"))
        pipe_a = AudioLDMPipeline(**comps).to("cpu")
        comps = dict(weights["video"], scheduler=base_v.make_scheduler("ddim"))
        pipe_v = AnimateDiffPipeline(**comps).to("cpu")
    pipe_a.set_progress_bar_config(disable=True)
    pipe_v.set_progress_bar_config(disable=True)
    for base, pipe in ((base_a, pipe_a), (base_v, pipe_v)):
        cond = base.encode_prompt(prompts)
        ours = sample_single(base, SamplerSettings(steps=steps), num_samples=2, cond=cond,
                             generator=torch.Generator().manual_seed(7))
        noise = torch.randn((2, *base.latent_shape), generator=torch.Generator().manual_seed(7))
        uncond = base.encode_prompt(["", ""])
        with torch.no_grad():
            if base.modality == "audio":
                seen = []
                pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=noise,
                     num_inference_steps=steps, guidance_scale=base.guidance_scale,
                     audio_length_in_s=0.64, callback=lambda i, t, x: seen.append(x.clone()),
                     callback_steps=1)
                theirs = seen[-1]
            else:
                out = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond,
                           latents=noise.permute(0, 2, 1, 3, 4), num_frames=FRAMES,
                           height=VIDEO_LATENT[2] * 2, width=VIDEO_LATENT[3] * 2,
                           num_inference_steps=steps, guidance_scale=base.guidance_scale,
                           output_type="latent").frames
                theirs = out.permute(0, 2, 1, 3, 4)      # [B, C, F, H, W] -> [N, F, C, H, W]
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- end to end
def test_encode_fakes_train_guided_sampling(weights, bases, encoded, tmp_path):
    base_a, base_v = bases
    real_a, real_v, prompts = encoded["a"], encoded["v"], encoded["prompts"]
    n_fake, steps = 8, 3
    fake_prompts = prompts[:n_fake]
    ca, cv = base_a.encode_prompt(fake_prompts), base_v.encode_prompt(fake_prompts)
    # fakes: each base alone, same prompts; deterministic under a seed
    settings = SamplerSettings(steps=steps)
    fa = sample_single(base_a, settings, num_samples=n_fake, cond=ca, batch_size=4,
                       generator=torch.Generator().manual_seed(1))
    fv = sample_single(base_v, settings, num_samples=n_fake, cond=cv, batch_size=4,
                       generator=torch.Generator().manual_seed(2))
    fa2 = sample_single(base_a, settings, num_samples=n_fake, cond=ca, batch_size=4,
                        generator=torch.Generator().manual_seed(1))
    assert fa.shape == (n_fake, *AUDIO_LATENT) and fv.shape == (n_fake, *VIDEO_LATENT)
    assert torch.equal(fa, fa2) and torch.isfinite(fv).all()
    # a few discriminator steps with the project's training loop
    D = Discriminator(audio_shape=AUDIO_LATENT, video_shape=VIDEO_LATENT, width=8, time_dim=16,
                      head_hidden=16, video_grid=2)
    cfg = DiscriminatorConfig(steps=3, batch_size=4, heldout=8, log_every=1, eval_every=3,
                      checkpoint_every=3)
    summary = train_discriminator(D, base_a, base_v, real_a=real_a, real_v=real_v, fake_a=fa,
                                  fake_v=fv, cfg=cfg, checkpoint_dir=tmp_path / "ckpt", seed=0)
    assert summary["steps"] == 3 and "acc_real_t500" in summary
    # guided sampling: scale 0 is the independent output bit for bit; guidance changes it
    ca4, cv4 = ca[:4], cv[:4]

    def joint(scale, seed=5):
        return sample_joint(base_a, base_v, settings, guides=[Guide(D, scale, scale)], num_samples=4,
                            cond_a=ca4, cond_v=cv4, generators=modality_generators(seed))

    a0, v0 = joint(0.0)
    gen_a, gen_v = modality_generators(5)
    ind_a = sample_single(base_a, settings, num_samples=4, cond=ca4, generator=gen_a)
    ind_v = sample_single(base_v, settings, num_samples=4, cond=cv4, generator=gen_v)
    assert torch.equal(a0, ind_a) and torch.equal(v0, ind_v)
    a1, v1 = joint(50.0)
    a1b, v1b = joint(50.0)
    assert a1.shape == (4, *AUDIO_LATENT) and v1.shape == (4, *VIDEO_LATENT)
    assert torch.equal(a1, a1b) and torch.equal(v1, v1b)           # deterministic
    assert not torch.equal(a1, a0) and not torch.equal(v1, v0)     # guidance acts
    # the latents decode to media
    assert encoded["enc_a"].decode(a1[:1]).shape == (1, N_CLIP)
    assert encoded["enc_v"].decode(v1[:1]).shape == (1, FRAMES, SIZE, SIZE, 3)


def test_conditional_discriminator_and_cfg_guide(bases, encoded, tmp_path):
    base_a, base_v = bases
    kw = dict(audio_shape=AUDIO_LATENT, video_shape=VIDEO_LATENT, width=8, time_dim=16,
              head_hidden=16, video_grid=2)
    prompts = encoded["prompts"]
    cond = joint_condition(base_a.encode_prompt(prompts), base_v.encode_prompt(prompts))
    assert cond.shape == (16, 64)
    torch.manual_seed(0)
    Dc = ConditionalDiscriminator(cond_dim=64, **kw)
    D = Discriminator(**kw)
    missing = D.load_state_dict(Dc.state_dict(), strict=False)
    assert not missing.missing_keys
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(4, *AUDIO_LATENT, generator=gen)
    v = torch.randn(4, *VIDEO_LATENT, generator=gen)
    t = torch.tensor([900, 500, 100, 10])
    with torch.no_grad():   # untrained: exactly the unconditional discriminator
        assert torch.equal(Dc(a, v, t, cond=cond[:4]), D(a, v, t))
    # a few conditional training steps in the discriminator's loop (condition dropout, the DSM
    # term through both bases' prompted ε, held-out accuracy), deterministic under a seed
    fake_a, fake_v = encoded["a"].flip(0), encoded["v"]
    cfg = DiscriminatorConfig(steps=3, batch_size=4, heldout=8, checkpoint_every=3, eval_every=3,
                      denoise_weight=0.5)
    every = torch.arange(len(prompts))
    conditions = Conditions(cond, every, every.flip(0), dropout=0.5,
                            base_a=base_a.encode_prompt(prompts), base_v=base_v.encode_prompt(prompts))
    states = []
    for run in range(2):
        torch.manual_seed(0)
        Dr = ConditionalDiscriminator(cond_dim=64, **kw)
        s = train_discriminator(Dr, base_a, base_v, real_a=encoded["a"], real_v=encoded["v"],
                                fake_a=fake_a, fake_v=fake_v, cfg=cfg, conditions=conditions,
                                checkpoint_dir=tmp_path / f"c{run}", seed=0)
        assert s["steps"] == 3 and 0 <= s["acc_real_t500"] <= 1
        states.append(Dr.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not torch.equal(states[0]["cond_proj.2.weight"], Dc.state_dict()["cond_proj.2.weight"])
    # it saves and loads as itself
    save_guide(Dr, tmp_path)
    back = load_guide(tmp_path)
    assert type(back) is ConditionalDiscriminator and back.cond_dim == 64
    with torch.no_grad():
        assert torch.equal(back(a, v, t, cond=cond[:4]), Dr.eval()(a, v, t, cond=cond[:4]))
    # the guide's input gradients are r_u + w (r_c − r_u) per modality, with each base's w
    Dc.load_state_dict(states[0])
    guide = CFGGuide.from_bases(Dc, cond[:1], base_a, base_v)
    assert (guide.w_a, guide.w_v) == (W_A, W_V)
    _, ga, gv = input_gradients(guide, a, v, t)
    _, ca_, cv_ = input_gradients(BoundCondition(Dc, cond[:1]), a, v, t)
    _, ua, uv = input_gradients(BoundCondition(Dc, None), a, v, t)
    torch.testing.assert_close(ga, ua + W_A * (ca_ - ua), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gv, uv + W_V * (cv_ - uv), rtol=1e-4, atol=1e-6)
    # usable as sample_joint's D; a bound conditional D trains with train_discriminator too
    ca4, cv4 = base_a.encode_prompt(prompts[:2]), base_v.encode_prompt(prompts[:2])
    guide = Guide(CFGGuide.from_bases(Dc, cond[:1], base_a, base_v), 5.0, 5.0)
    out_a, out_v = sample_joint(base_a, base_v, SamplerSettings(steps=2), guides=[guide],
                                num_samples=2, cond_a=ca4, cond_v=cv4,
                                generators=modality_generators(0))
    assert torch.isfinite(out_a).all() and torch.isfinite(out_v).all()
    summary = train_discriminator(BoundCondition(Dc, cond[:1]), base_a, base_v,
                                  real_a=encoded["a"], real_v=encoded["v"], fake_a=fake_a,
                                  fake_v=fake_v, cfg=dataclasses.replace(cfg, steps=1, eval_every=1),
                                  checkpoint_dir=tmp_path / "bound", seed=0)
    assert summary["steps"] == 1


# --------------------------------------------------------------------------- config and stage glue
def test_presets_and_pretrained_config(weights, tmp_path):
    root = Path(__file__).resolve().parents[1]
    for preset in sorted((root / "params").glob("pretrained-*.yaml")):
        p = apply_preset(preset, root / "params.yaml", reset=True, write=False).params
        assert p.base.audio.kind == "audioldm" and p.base.video.kind == "animatediff"
        assert p.encoders.audio.kind == "audioldm" and p.encoders.video.kind == "sd_vae"
    assert load_params(root / "params.yaml") == Params()
    with pytest.raises(ConfigError, match="pretrained.model"):
        build(TrainBaseConfig, {"kind": "audioldm"}, "base.audio")
    with pytest.raises(ConfigError, match="not a video base"):
        build(Params, {"base": {"video": {"kind": "audioldm", "pretrained": {"model": "x"}}}})
    with pytest.raises(ConfigError, match="encoders.audio.model"):
        build(Params, {"encoders": {"audio": {"kind": "audioldm"}}})
    # what the train_base stage does for a pretrained kind: no training, a loadable base.json
    cfg = build(TrainBaseConfig, {"kind": "animatediff", "pretrained": {
        "model": str(weights["sd15"]), "motion_adapter": str(weights["adapter"]),
        "device": "cpu"}}, "base.video")
    summary = prepare_pretrained_base(torch.zeros(2, *VIDEO_LATENT), cfg, tmp_path / "base_video")
    assert summary["steps"] == 0
    base = load_base(tmp_path / "base_video")
    assert base.latent_shape == VIDEO_LATENT
