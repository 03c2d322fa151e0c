"""The Auffusion adapter and encoder, offline: tiny random components in Auffusion's hub layout
(tests/support/tiny_auffusion.py) and fixtures computed by Auffusion's own code on random weights
(tests/fixtures/auffusion/make_fixture.py).

Tolerances: the vocoder and front-end fixtures are float32 on the CPU with the same operations
in the same order as Auffusion's code (convolutions, STFT, one matmul, the same weight-norm
fold), so they agree to a few float32 ulps of their magnitudes; 1e-5 absolute leaves room for
other CPU convolution kernels (outputs are |x| < 1 waveforms and log-mels in [−11.5, 5.3])
while still catching any wrong padding, slope, ordering or filter (those move values by
> 1e-3). The adapter-vs-reference-loop checks allow 1e-5: same UNet, same inputs, only the
batch composition of the UNet calls may differ.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from mmdisco.bases.auffusion import AuffusionBase, load_text_encoder
from mmdisco.bases.protocol import read_meta
from mmdisco.encoders.auffusion import (LOG_MIN, AuffusionEncoder, AuffusionMel, HifiGanGenerator,
                                        slaney_mel_filters)
from mmdisco.guidance.sampler import SamplerSettings, sample_single
from support.tiny_auffusion import (LATENT, N_CLIP, N_MELS, SR_CLIP, TEXT_DIM, TEXT_LEN, VOCODER,
                                    W, components, save_hub_layout, weight_norm_state)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "auffusion"
PROMPTS = ["a red beep", "a blue tone"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    comps = components()
    return comps, save_hub_layout(comps, tmp_path_factory.mktemp("weights") / "auffusion")


@pytest.fixture(scope="module")
def base(weights):
    return AuffusionBase.from_pretrained(weights[1], latent_shape=LATENT, guidance_scale=W,
                                         device="cpu")


@pytest.fixture(scope="module")
def encoder(weights):
    return AuffusionEncoder(model=str(weights[1]), sample_rate=SR_CLIP, num_samples=N_CLIP,
                            device="cpu", progress=False)


def tones(n: int = 4) -> torch.Tensor:
    """Clips at the clip rate: tone k at 300 + 900 k Hz."""
    time = torch.arange(N_CLIP) / SR_CLIP
    freq = 300.0 + 900.0 * (torch.arange(n) % 4)
    return (0.5 * torch.sin(2 * math.pi * freq[:, None] * time[None])).float()


def reference_prompt(comps, prompt: str) -> torch.Tensor:
    """Auffusion's recipe: tokens unpadded, last hidden state, zero-padded, then the adapter."""
    ids = comps["tokenizer"](prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        states = comps["text_encoder"](ids).last_hidden_state
        return comps["adapter"](F.pad(states, (0, 0, 0, TEXT_LEN - states.shape[1])))


# --------------------------------------------------------------------------- the base
def test_layout_and_null_condition(weights, base):
    comps = weights[0]
    x = torch.randn(2, *LATENT, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([900, 30])
    assert torch.equal(base._from_unet(base._to_unet(x)), x)
    assert base._to_unet(x).shape == (2, LATENT[0], LATENT[2], LATENT[1])   # [N, 4, M, T] inside
    zeros = torch.zeros(2, TEXT_LEN, TEXT_DIM)
    with torch.no_grad():
        ours = base.eps(x, t)
        theirs = comps["unet"](x.transpose(2, 3), t, encoder_hidden_states=zeros).sample
    torch.testing.assert_close(ours, theirs.transpose(2, 3), rtol=0, atol=1e-6)
    assert torch.equal(base.uncond, torch.zeros(1, TEXT_LEN, TEXT_DIM))      # Auffusion's null
    assert torch.equal(base.null_embedding(), base.uncond)
    with pytest.raises(ValueError, match=r"\(C, T, M\) with C = 4"):
        AuffusionBase(comps["unet"], base.scheduler_config, (8, 32, 16))


def test_prompt_embeddings_follow_auffusion(weights, base):
    comps = weights[0]
    emb = base.encode_prompt(PROMPTS + ["x" * 40])               # the last one is truncated
    assert emb.shape == (3, TEXT_LEN, TEXT_DIM)
    for row, prompt in zip(emb, PROMPTS):
        torch.testing.assert_close(row[None], reference_prompt(comps, prompt), rtol=0, atol=1e-6)
    n_tokens = comps["tokenizer"](PROMPTS[0], return_tensors="pt").input_ids.shape[1]
    with torch.no_grad():   # padded positions: the adapter's output for zeros, LayerNorm(bias)
        pad = comps["adapter"](torch.zeros(TEXT_DIM))
    torch.testing.assert_close(emb[0, n_tokens:], pad.expand(TEXT_LEN - n_tokens, -1))
    embed = load_text_encoder(weights[1], device="cpu")
    torch.testing.assert_close(embed(PROMPTS), emb[:2], rtol=0, atol=1e-6)
    assert torch.equal(embed.null(), torch.zeros(1, TEXT_LEN, TEXT_DIM))


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_unguided_sampling_equals_a_reference_loop(weights, base, kind):
    """sample_single through the adapter = Auffusion's pipeline loop written out on the same
    UNet and scheduler config ([N, 4, M, T] latents, [uncond; cond] batch, CFG, step)."""
    from diffusers import DDIMScheduler, DDPMScheduler
    comps, root = weights
    steps, cond = 4, base.encode_prompt(PROMPTS)
    ours = sample_single(base, SamplerSettings(steps=steps, kind=kind, eta=0.0), num_samples=2,
                         cond=cond, generator=torch.Generator().manual_seed(7))
    cls = DDIMScheduler if kind == "ddim" else DDPMScheduler
    sched = cls.from_pretrained(root, subfolder="scheduler", timestep_spacing="trailing",
                                clip_sample=False)
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(7)
    # the scheduler is elementwise; it steps in our layout so that DDPM's noise draws line up
    latents = torch.randn((2, *LATENT), generator=gen) * sched.init_noise_sigma
    context = torch.cat([torch.zeros_like(cond), cond])
    with torch.no_grad():
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([latents] * 2), t).transpose(2, 3)
            out = comps["unet"](inp, t, encoder_hidden_states=context).sample.transpose(2, 3)
            eps_u, eps_c = out.chunk(2)
            eps = eps_u + W * (eps_c - eps_u)
            extra = {"eta": 0.0} if kind == "ddim" else {}
            latents = sched.step(eps, t, latents, generator=gen, **extra).prev_sample
    torch.testing.assert_close(ours, latents, rtol=0, atol=1e-5)


def test_cfg_matches_the_formula(base):
    x = torch.randn(2, *LATENT, generator=torch.Generator().manual_seed(1))
    t, cond = torch.tensor([500, 20]), base.encode_prompt(PROMPTS)
    with torch.no_grad():
        got = base.eps(x, t, cond)
        base.guidance_scale = 1.0
        eps_c, eps_u = base.eps(x, t, cond), base.eps(x, t, None)
        base.guidance_scale, base.cfg_batch = W, False
        two_pass = base.eps(x, t, cond)
        base.cfg_batch = True
    torch.testing.assert_close(got, eps_u + W * (eps_c - eps_u), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(two_pass, got, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="prompt embeddings"):
        base.eps(x, t, torch.zeros(2, 7, TEXT_DIM))


def test_save_and_load_through_base_json(weights, base, tmp_path):
    base.save(tmp_path / "a")
    meta = read_meta(tmp_path / "a")
    assert (meta["kind"], meta["modality"]) == ("auffusion", "audio")
    assert meta["latent_shape"] == list(LATENT)
    assert meta["source"]["model"] == str(weights[1]) and meta["guidance_scale"] == W
    assert meta["context_frames"] is None and meta["cond_length"] == TEXT_LEN
    again = AuffusionBase.load(tmp_path / "a", meta, device="cpu")
    x = torch.randn(2, *LATENT, generator=torch.Generator().manual_seed(2))
    t, cond = torch.tensor([999, 10]), base.encode_prompt(PROMPTS)
    with torch.no_grad():
        assert torch.equal(base.eps(x, t, cond), again.eps(x, t, cond))
    bare = AuffusionBase.from_pretrained(weights[1], latent_shape=LATENT, text_encoder=False,
                                         cond_length=TEXT_LEN, device="cpu")   # no text: zeros null
    assert bare._cond_shape() == (TEXT_LEN, TEXT_DIM)
    with torch.no_grad():
        torch.testing.assert_close(bare.eps(x, t), base.eps(x, t), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="without its text encoder"):
        bare.encode_prompt("a")


def test_context_padding_with_noised_silence(weights, encoder, tmp_path):
    """context_frames: the UNet sees the latent followed by silence noised to t, cut back."""
    comps, root = weights
    short, context = (4, 24, 16), 32
    padded = AuffusionBase.from_pretrained(root, latent_shape=short, context_frames=context,
                                           device="cpu")
    silence = encoder.silence_latent(context)
    assert silence.shape == (4, context, 16)
    x = torch.randn(2, *short, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([700, 40])
    a_bar = padded.alphas_cumprod()[t].float()[:, None, None, None]
    tail = silence[:, 24:].transpose(1, 2)                                  # [4, M, 8]
    noise = torch.randn(tail.shape, generator=torch.Generator().manual_seed(0))
    full = torch.cat([x.transpose(2, 3), a_bar.sqrt() * tail + (1 - a_bar).sqrt() * noise], dim=-1)
    with torch.no_grad():
        ours = padded.eps(x, t)
        zeros = torch.zeros(2, TEXT_LEN, TEXT_DIM)
        theirs = comps["unet"](full, t, encoder_hidden_states=zeros).sample
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, theirs[..., :24].transpose(2, 3), rtol=0, atol=1e-5)
    padded.save(tmp_path / "p")
    again = AuffusionBase.load(tmp_path / "p", read_meta(tmp_path / "p"), device="cpu")
    assert again.context_frames == context
    with torch.no_grad():
        assert torch.equal(again.eps(x, t), ours)
    with pytest.raises(ValueError, match="shorter than the latent"):
        AuffusionBase.from_pretrained(root, latent_shape=short, context_frames=16, device="cpu")


def test_folder_errors_and_the_stable_diffusion_layout(weights, tmp_path):
    comps, root = weights
    with pytest.raises(FileNotFoundError, match="condition_config.json"):
        (tmp_path / "empty" / "unet").mkdir(parents=True)
        AuffusionBase.from_pretrained(tmp_path / "empty", latent_shape=LATENT, device="cpu")
    sd = tmp_path / "sd"
    for name in ("unet", "scheduler", "text_encoder", "tokenizer"):
        comps[name].save_pretrained(sd / name)
    plain = AuffusionBase.from_pretrained(sd, latent_shape=LATENT, device="cpu")
    ids = comps["tokenizer"]("a red beep", return_tensors="pt").input_ids
    with torch.no_grad():
        states = comps["text_encoder"](ids).last_hidden_state      # no adapter: zero padding stays
    got = plain.encode_prompt("a red beep")
    assert got.shape == (1, 77, TEXT_DIM)
    torch.testing.assert_close(got, F.pad(states, (0, 0, 0, 77 - states.shape[1])), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- the encoder
def test_encoder_round_trip_shapes(encoder, weights, tmp_path):
    clips = tones(4)
    z = encoder.encode(clips)
    assert z.shape == (4, *LATENT) == (4, *encoder.latent_shape) and torch.isfinite(z).all()
    again = AuffusionEncoder.from_state(json.loads(json.dumps(encoder.state())), device="cpu",
                                        progress=False)
    torch.testing.assert_close(again.encode(clips[:2]), z[:2], rtol=1e-5, atol=1e-6)
    mel = encoder.log_mel(clips)
    assert mel.shape == (4, N_MELS, 64) and float(mel.min()) >= LOG_MIN - 1e-6
    # the 300 Hz tone sits in the low bins, which the image puts at the bottom rows
    assert int(mel[0].mean(-1).argmax()) < 4
    image = AuffusionMel.to_image(mel)
    assert image.shape == (4, 3, N_MELS, 64) and float(image.min()) >= -1 and float(image.max()) <= 1
    assert int(image[0, 0].mean(-1).argmax()) >= N_MELS - 4
    torch.testing.assert_close(AuffusionMel.from_image(image), mel.clamp(max=math.log(200.0)),
                               rtol=0, atol=1e-5)
    assert encoder.decode_mel(z[:2]).shape == (2, N_MELS, 64)
    assert encoder.to_db(z[:2]).shape == (2, 64, N_MELS)
    wave = encoder.decode(z[:2])
    assert wave.shape == (2, N_CLIP) and wave.dtype == torch.float32 and torch.isfinite(wave).all()
    padded = AuffusionEncoder(model=str(weights[1]), sample_rate=SR_CLIP, num_samples=N_CLIP,
                              device="cpu", progress=False, context_mel_frames=96)
    zp = padded.encode(clips[:2])
    assert zp.shape == (2, *LATENT) and padded.state()["context_mel_frames"] == 96
    assert torch.isfinite(zp).all() and not torch.equal(zp, z[:2])   # the VAE sees the padding
    with pytest.raises(ValueError, match="context_mel_frames"):
        AuffusionEncoder(model=str(weights[1]), sample_rate=SR_CLIP, num_samples=N_CLIP,
                         device="cpu", context_mel_frames=60)


# --------------------------------------------------------------------------- against Auffusion's code
def _fixture(name: str):
    with safe_open(FIXTURES / name, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.mark.parametrize("name", ["type1", "type2"])
def test_vocoder_matches_auffusion(name):
    tensors, meta = _fixture(f"vocoder_{name}.safetensors")
    config = json.loads(meta["fixture"])["config"]
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    gen = HifiGanGenerator(config).eval()
    gen.load_weight_norm_state_dict(state, source=name)          # strict: all keys, no others
    with torch.no_grad():
        wav = gen(tensors["mel"])
    assert wav.shape == tensors["wav"].shape == (1, 1, 20 * 160)
    torch.testing.assert_close(wav, tensors["wav"], rtol=0, atol=1e-5)
    assert float(tensors["wav"].std()) > 0.01                   # the check is not vacuous
    with pytest.raises(ValueError, match="missing conv_post.weight"):
        gen.load_weight_norm_state_dict({k: v for k, v in state.items()
                                         if not k.startswith("conv_post.weight")}, source=name)
    with pytest.raises(ValueError, match="unexpected extra"):
        gen.load_weight_norm_state_dict({**state, "extra": torch.zeros(1)}, source=name)
    with pytest.raises(ValueError, match="conv_pre.weight_g without conv_pre.weight_v"):
        gen.load_weight_norm_state_dict({k: v for k, v in state.items()
                                         if k != "conv_pre.weight_v"}, source=name)


def test_front_end_matches_auffusion():
    tensors, _ = _fixture("frontend.safetensors")
    mel = AuffusionMel(sample_rate=16000, hop_length=160, n_mels=256)
    ours = mel.log_mel(tensors["clip"])
    assert ours.shape == tensors["log_mel"].shape == (1, 256, 25)
    torch.testing.assert_close(ours, tensors["log_mel"], rtol=0, atol=1e-5)
    image = AuffusionMel.to_image(tensors["log_mel"])
    torch.testing.assert_close((image[0, 0] + 1) / 2, tensors["image0"], rtol=0, atol=1e-6)
    assert torch.equal(image[0, 0], image[0, 2])
    back = AuffusionMel.from_image(tensors["unit_image"][None] * 2 - 1)[0]
    torch.testing.assert_close(back, tensors["denormalized"], rtol=0, atol=1e-5)
    filters = slaney_mel_filters(16000, 2048, 256, 0.0, 8000.0)
    assert filters.shape == (256, 1025) and float(filters.min()) >= 0


def test_vocoder_folder_loads_and_says_what_is_missing(weights, tmp_path):
    comps, root = weights
    voc = HifiGanGenerator.from_folder(root / "vocoder")
    mel = torch.randn(1, N_MELS, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(voc(mel), comps["vocoder"](mel), rtol=0, atol=1e-6)
    assert voc.hop_length == 160 and voc.sampling_rate == 16000
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "config.json").write_text(json.dumps(VOCODER))
    with pytest.raises(FileNotFoundError, match="vocoder.pt is missing"):
        HifiGanGenerator.from_folder(tmp_path / "v")
    torch.save({"generator": weight_norm_state(HifiGanGenerator({**VOCODER, "num_mels": 8}),
                                               torch.Generator())}, tmp_path / "v" / "vocoder.pt")
    with pytest.raises(ValueError, match="does not fit"):
        HifiGanGenerator.from_folder(tmp_path / "v")
