"""The released MMDisCo discriminators (``mmdisco.guidance.release``) against the authors' code.

The fixtures in ``tests/fixtures/release`` were computed by the release itself
(``make_fixture.py``, run by hand with a checkout of SonyResearch/MMDisCo): small discriminators
of its three structures with seeded random weights, their inputs in the release's layouts and the
release's logit ``h``, ``φ(h)`` and guidance residuals. Nothing here downloads.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmdisco.guidance.discriminator import residuals
from mmdisco.guidance.release import (SETTINGS, ReleasedDiscriminator, arch_from_release_config,
                                      build_released, load_released, load_state_strict,
                                      potential_slope, release_potential, to_native, to_ours)

FIXTURES = Path(__file__).parent / "fixtures" / "release"
META = json.loads((FIXTURES / "configs.json").read_text())
SMALL = list(META["small"])
PARAMS = {"audioldm_animediff_vggsound": 33_261_313, "auffusion_videocrafter2_vggsound": 38_972_161,
          "mmdiffusion_landscape": 12_682_241, "mmdiffusion_aist++": 12_682_241}

# Tolerance. Our layers do the release's float32 operations, in places in another order or
# kernel (matmul for einsum attention, permute+reshape for einops, one 2N-row batch). Each op
# rounds at float32 epsilon 1.2e-7; over these ~20-layer nets with reductions of up to ~10^3
# terms (GroupNorm, means, the last linear) the error stays ~10 ulp: we measured at most
# 6e-7 on h and 1.1e-6 of max|r| on the residuals. 1e-5 leaves a 10x margin and is still far
# below any real difference (the φ-vs-h slope alone differs by 5% in waveform_aggregate).
TOL = 1e-5

# Comparing autograd's float32 dφ/dh with the exact (float64) slope near saturation: at h ≈ 9,
# float32 p = sigmoid(h) carries 1 − p ≈ 1.2e-4 with a relative error up to 2^-24 / 1.2e-4 ≈ 5e-4
# (the release's own float32 residual has that error too), so these checks allow 2e-3.
SATURATED_TOL = 2e-3


def close(ours: torch.Tensor, ref: torch.Tensor, tol: float = TOL) -> bool:
    """Equal to within ``tol`` times the reference's largest magnitude."""
    assert ours.shape == ref.shape and float(ref.abs().max()) > 0
    return bool((ours - ref).abs().max() <= tol * float(ref.abs().max()))


def load_small(name: str) -> tuple[ReleasedDiscriminator, dict, dict]:
    """Our discriminator with the fixture's weights (strict), its tensors and its config."""
    info = META["small"][name]
    tensors = load_file(str(FIXTURES / f"{name}.safetensors"))
    model = build_released(arch_from_release_config(info["residual_predictor"]))
    state = {k[len("state."):]: v.float() for k, v in tensors.items() if k.startswith("state.")}
    load_state_strict(model.eval(), state, f"{name}.safetensors")
    return model, tensors, info


def small_inputs(tensors: dict, info: dict):
    """The fixture's inputs in our layouts: ``(audio, video, t, cond_audio, cond_video)``."""
    a, v = tensors["input.audio"], tensors["input.video"]
    if info["audio_spatial_transpose"]:
        a = a.transpose(2, 3)
    if info["video_channel_time_transpose"]:
        v = v.transpose(1, 2)
    return a, v, tensors["input.t"], tensors.get("input.cond_audio"), tensors.get("input.cond_video")


def grads(model, a, v, t, ca=None, cv=None, fn="logit"):
    """``(∇_a Σ out, ∇_v Σ out)`` of ``model.logit`` (h) or ``model`` (φ)."""
    a, v = a.clone().requires_grad_(True), v.clone().requires_grad_(True)
    out = model.logit(a, v, t, ca, cv) if fn == "logit" else model(a, v, t, ca, cv)
    return torch.autograd.grad(out.sum(), (a, v))


# --------------------------------------------------------------------------- against the release
@pytest.mark.parametrize("name", SMALL)
def test_logit_and_potential_match_the_release(name):
    model, tensors, info = load_small(name)
    a, v, t, ca, cv = small_inputs(tensors, info)
    with torch.no_grad():
        h = model.logit(a, v, t, ca, cv)
        phi = model(a, v, t, ca, cv)
    assert close(h, tensors["out.h"]) and close(phi, tensors["out.phi"])
    assert torch.allclose(release_potential(tensors["out.h"]), tensors["out.phi"], atol=1e-6)


@pytest.mark.parametrize("name", SMALL)
def test_our_residuals_are_the_releases(name):
    model, tensors, info = load_small(name)
    a, v, t, ca, cv = small_inputs(tensors, info)
    guide = model if ca is None else model.bind(ca, cv)
    r_a, r_v = residuals(guide, a, v, t, tensors["input.alphas_audio"], tensors["input.alphas_video"])
    ref_a, ref_v = tensors["out.residual_audio"], tensors["out.residual_video"]
    if info["audio_spatial_transpose"]:       # back to the release's layout
        r_a = r_a.transpose(2, 3)
    if info["video_channel_time_transpose"]:
        r_v = r_v.transpose(1, 2)
    assert r_a.shape == ref_a.shape and r_v.shape == ref_v.shape
    assert close(r_a, ref_a) and close(r_v, ref_v)


def test_the_releases_residual_is_not_the_plain_logit_gradient():
    """Where ``|h|`` is large (the waveform fixture has h ≈ 9) the release's ``−σ ∇φ`` is smaller
    than ``−σ ∇h`` by exactly ``dφ/dh`` per pair; near h = 0 the two agree to ~1e-5."""
    for name in ("waveform_aggregate", "latent_aggregate"):
        model, tensors, info = load_small(name)
        a, v, t, ca, cv = small_inputs(tensors, info)
        ga_h, _ = grads(model, a, v, t, ca, cv, fn="logit")
        ga_phi, _ = grads(model, a, v, t, ca, cv, fn="phi")
        slope = potential_slope(tensors["out.h"]).float()
        assert close(ga_phi, ga_h * slope.reshape(-1, *[1] * (ga_h.ndim - 1)), tol=SATURATED_TOL)
        if name == "waveform_aggregate":
            assert float(slope.max()) < 0.97        # a 3-6% smaller residual than −σ ∇h
        else:
            assert float((1 - slope).abs().max()) < 1e-4


# --------------------------------------------------------------------------- the full settings
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_parameter_counts(setting):
    model = build_released(setting)
    n = sum(p.numel() for p in model.parameters())
    assert n == PARAMS[setting] == SETTINGS[setting].params == META["full"][setting]["params"]
    assert sum(t.numel() for t in model.state_dict().values()) == n      # no buffers


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_keys_shapes_and_config_equal_the_releases(setting):
    release = json.loads((FIXTURES / "release_keys.json").read_text())[setting]
    with torch.device("meta"):
        ours = [[k, list(v.shape)] for k, v in build_released(setting).state_dict().items()]
    assert ours == release                                   # same names, shapes and order
    assert arch_from_release_config(META["full"][setting]["residual_predictor"]) == SETTINGS[setting].arch


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_strict_round_trip_through_load_released(setting, tmp_path):
    torch.manual_seed(0)
    built = build_released(setting)
    path = tmp_path / f"{setting}.pt"
    try:
        torch.save(built.state_dict(), path)
        loaded = load_released(path, setting)
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        assert all(torch.equal(x, loaded.state_dict()[k]) for k, x in built.state_dict().items())
    finally:
        path.unlink(missing_ok=True)


def test_load_released_strips_the_wrapper_prefix(tmp_path):
    """The release's ``MMDisCo.state_dict()`` prefixes every key with ``residual_predictor.``."""
    torch.manual_seed(0)
    built = build_released("mmdiffusion_aist++")
    path = tmp_path / "wrapped.pt"
    try:
        torch.save(built.state_dict(prefix="residual_predictor."), path)
        loaded = load_released(path, "mmdiffusion_aist++")
        assert all(torch.equal(x, loaded.state_dict()[k]) for k, x in built.state_dict().items())
    finally:
        path.unlink(missing_ok=True)


def test_load_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="download mmdiffusion_landscape.pt from https://huggingface.co"):
        load_released(tmp_path / "nope.pt", "mmdiffusion_landscape")
    model, _, _ = load_small("waveform_aggregate")
    path = tmp_path / "small.pt"
    torch.save(model.state_dict(), path)
    with pytest.raises(ValueError, match="small.pt does not fit setting mmdiffusion_landscape.*none"):
        load_released(path, "mmdiffusion_landscape")
    torch.save({"weights": [1, 2]}, path)
    with pytest.raises(ValueError, match="small.pt is not a state dict"):
        load_released(path, "mmdiffusion_landscape")
    with torch.device("meta"):
        other = build_released("mmdiffusion_aist++").state_dict()
        target = build_released("audioldm_animediff_vggsound")
    with pytest.raises(ValueError, match="matches setting.*mmdiffusion_landscape, mmdiffusion_aist"):
        load_state_strict(target, other)
    with pytest.raises(ValueError, match="unknown released setting"):
        build_released("audioldm")


# --------------------------------------------------------------------------- text conditions
def test_token_states_and_pooled_text_are_the_same_input():
    """Token states ``[N, L, D]`` are averaged over tokens: the same as passing the mean."""
    for name in ("latent_aggregate", "latent_transformer"):
        model, tensors, info = load_small(name)
        a, v, t, ca, cv = small_inputs(tensors, info)
        tok_a = ca if ca.ndim == 3 else torch.randn(ca.shape[0], 7, ca.shape[1])
        tok_v = cv if cv.ndim == 3 else torch.randn(cv.shape[0], 7, cv.shape[1])
        with torch.no_grad():
            h_tokens = model.logit(a, v, t, tok_a, tok_v)
            h_pooled = model.logit(a, v, t, tok_a.mean(dim=1), tok_v.mean(dim=1))
            h_one_row = model.logit(a[:1].expand(2, *a.shape[1:]), v[:1].expand(2, *v.shape[1:]),
                                    t[:1].expand(2), tok_a[:1], tok_v[:1])
        assert torch.equal(h_tokens, h_pooled)
        assert torch.allclose(h_one_row[0], h_one_row[1]) and torch.allclose(h_one_row[0], h_tokens[0])


def test_cfg_guide_combines_residuals_as_the_release_does():
    """``bind(…, uncond, weights)`` gives ``r_u + w_m (r_c − r_u)`` per modality, from one pass."""
    model, tensors, info = load_small("latent_transformer")
    a, v, t, ca, cv = small_inputs(tensors, info)
    g = torch.Generator().manual_seed(3)
    ua, uv = torch.randn(ca.shape, generator=g), torch.randn(cv.shape, generator=g)
    alphas = tensors["input.alphas_audio"], tensors["input.alphas_video"]
    rc = residuals(model.bind(ca, cv), a, v, t, *alphas)
    ru = residuals(model.bind(ua, uv), a, v, t, *alphas)
    w_a, w_v = 8.0, 2.5
    r_a, r_v = residuals(model.bind(ca, cv, uncond_audio=ua, uncond_video=uv, weights=(w_a, w_v)),
                         a, v, t, *alphas)
    assert close(r_a, ru[0] + w_a * (rc[0] - ru[0])) and close(r_v, ru[1] + w_v * (rc[1] - ru[1]))
    default = model.bind(ca, cv, uncond_audio=ua, uncond_video=uv)      # no setting: (1, 1)
    assert (default.w_a, default.w_v) == (1.0, 1.0)
    named = build_released("auffusion_videocrafter2_vggsound").bind(ca, cv, uncond_audio=ua, uncond_video=uv)
    assert (named.w_a, named.w_v) == SETTINGS["auffusion_videocrafter2_vggsound"].cfg_weights
    with pytest.raises(ValueError, match="need the unconditional embeddings"):
        model.bind(ca, cv, weights=(2.0, 2.0))


def test_clear_errors_for_wrong_inputs():
    model, tensors, info = load_small("latent_aggregate")
    a, v, t, ca, cv = small_inputs(tensors, info)
    with pytest.raises(ValueError, match="text-conditional.*bind"):
        model(a, v, t)
    with pytest.raises(ValueError, match=r"\[N, C, F, H, W\]: use release.to_ours"):
        model(a, tensors["input.video"][:, :, :2], t, ca, cv)       # native AnimateDiff layout
    with pytest.raises(ValueError, match="cond_video must be"):
        model(a, v, t, ca, cv[..., :3])
    uncond, _, _ = load_small("waveform_aggregate")
    with pytest.raises(ValueError, match="unconditional: pass no text"):
        uncond(torch.zeros(2, 1, 64), torch.zeros(2, 3, 3, 8, 8), t, ca, cv)
    with pytest.raises(ValueError, match="use the discriminator itself"):
        uncond.bind(ca, cv)
    long_model, tensors, info = load_small("latent_transformer")
    a, v, t, ca, cv = small_inputs(tensors, info)
    with pytest.raises(ValueError, match="positions"):
        long_model.logit(a.repeat(1, 1, 30, 1), v, t, ca, cv)     # 2 + 3 + 150 tokens > 128


def test_layout_conversion():
    a, v = torch.randn(2, 4, 32, 25), torch.randn(2, 4, 16, 8, 8)      # Auffusion, VideoCrafter2
    ours_a, ours_v = to_ours("auffusion_videocrafter2_vggsound", a, v)
    assert ours_a.shape == (2, 4, 25, 32) and ours_v.shape == (2, 16, 4, 8, 8)
    back_a, back_v = to_native("auffusion_videocrafter2_vggsound", ours_a, ours_v)
    assert torch.equal(back_a, a) and torch.equal(back_v, v)
    a8, v = torch.randn(2, 8, 50, 16), torch.randn(2, 4, 16, 8, 8)      # AudioLDM, AnimateDiff
    ours_a, ours_v = to_ours("audioldm_animediff_vggsound", a8, v)
    assert ours_a is a8 and ours_v.shape == (2, 16, 4, 8, 8)
    wave, pix = torch.randn(2, 1, 64), torch.randn(2, 16, 3, 8, 8)
    assert all(x is y for x, y in zip(to_ours("mmdiffusion_aist++", wave, pix), (wave, pix)))


# --------------------------------------------------------------------------- separability
FULL_INPUTS = {"audioldm_animediff_vggsound": ((1, 8, 4, 16), (1, 2, 4, 8, 8)),
               "auffusion_videocrafter2_vggsound": ((1, 4, 4, 8), (1, 2, 4, 8, 8)),
               "mmdiffusion_landscape": ((1, 1, 64), (1, 2, 3, 8, 8)),
               "mmdiffusion_aist++": ((1, 1, 64), (1, 2, 3, 8, 8))}


def _two_of_each(model: ReleasedDiscriminator, shapes, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    a1, a2 = (torch.randn(shapes[0], generator=g) for _ in range(2))
    v1, v2 = (torch.randn(shapes[1], generator=g) for _ in range(2))
    dims = model.arch.text_dims
    text = (None, None) if dims is None else tuple(torch.randn(1, d, generator=g) for d in dims)
    return (a1, a2), (v1, v2), text


def assert_separation(model: ReleasedDiscriminator, shapes, t: torch.Tensor) -> None:
    """Separable: ``∇_a h`` bit-identical when only the video changes (and ``∇_v h`` when only the
    audio does). Coupled: both gradients move by more than 0.1% of their size."""
    (a1, a2), (v1, v2), (ca, cv) = _two_of_each(model, shapes)
    ga_v1, gv_a1 = grads(model, a1, v1, t, ca, cv)
    ga_v2, _ = grads(model, a1, v2, t, ca, cv)
    _, gv_a2 = grads(model, a2, v1, t, ca, cv)
    if model.arch.separable:
        assert torch.equal(ga_v1, ga_v2) and torch.equal(gv_a1, gv_a2)
    else:
        assert float((ga_v1 - ga_v2).abs().max()) > 1e-3 * float(ga_v1.abs().max())
        assert float((gv_a1 - gv_a2).abs().max()) > 1e-3 * float(gv_a1.abs().max())


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_each_real_setting_is_what_its_fusion_says(setting):
    """Built with random weights: three settings give ``h = f(v, t, text) + g(a, t, text)``;
    ``cat_time_and_apply_transformer`` (Auffusion/VideoCrafter2) couples audio and video."""
    torch.manual_seed(0)
    model = build_released(setting).eval()
    assert model.arch.separable == (setting != "auffusion_videocrafter2_vggsound")
    assert_separation(model, FULL_INPUTS[setting], torch.tensor([500]))


@pytest.mark.parametrize("name", SMALL)
def test_small_release_structures_separate_the_same_way(name):
    model, tensors, info = load_small(name)
    a, v, t, _, _ = small_inputs(tensors, info)
    assert model.arch.separable == (name != "latent_transformer")
    assert_separation(model, (tuple(a.shape), tuple(v.shape)), t)


def test_the_releases_residual_couples_separable_settings_only_through_dphi_dh():
    """In a separable setting the release's audio residual still changes with the video, but only
    by the per-pair factor ``dφ/dh(h(a, v'))`` / ``dφ/dh(h(a, v))``."""
    model, tensors, info = load_small("waveform_aggregate")
    a, v, t, _, _ = small_inputs(tensors, info)
    v2 = v.flip(0)
    phi_1, _ = grads(model, a, v, t, fn="phi")
    phi_2, _ = grads(model, a, v2, t, fn="phi")
    with torch.no_grad():
        ratio = potential_slope(model.logit(a, v2, t)) / potential_slope(model.logit(a, v, t))
    assert not torch.equal(phi_1, phi_2)
    assert close(phi_2, phi_1 * ratio.float().reshape(-1, 1, 1), tol=SATURATED_TOL)
