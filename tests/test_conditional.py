"""The text-conditional path's pieces: the tiny bases' frozen text encoder, captions of the
embedded world, conditional tiny bases with classifier-free guidance, the prompt table and
prompt agreement."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmdisco.bases import load_base
from mmdisco.bases.tiny import TinyBase
from mmdisco.bases.train import train_base
from mmdisco.config import ConfigError, SynthConfig, build, load_params
from mmdisco.data.synth import class_captions
from mmdisco.encoders.text import HashedText, encode_prompts, words
from mmdisco.eval.decoders import AudioReading, VideoReading
from mmdisco.eval.evaluation import prompt_classes, subsample
from mmdisco.eval.metrics import pair_metrics
from mmdisco.io import save_tensors, write_json
from mmdisco.prompts import TEXT_INDEX, PromptTable, text_file
from support.project import ROOT


# --------------------------------------------------------------------------- text encoder
def test_hashed_text_is_frozen_deterministic_and_word_order_free():
    enc = HashedText(256)
    a = enc.encode(["A red ball, low tone", "low tone red ball a", "a blue ball", ""])
    assert a.shape == (4, 256) and a.dtype == torch.float32
    assert torch.allclose(a[0], a[1], atol=1e-6)              # a bag of words
    assert torch.equal(a[3], torch.zeros(256))                # the empty prompt is zero
    assert torch.equal(HashedText(256).encode(["a red ball"]), enc.encode(["a red ball"]))
    assert words("It's a RED-ball!") == ["it's", "a", "red", "ball"]
    # unit variance per entry whatever the length; distinct words nearly orthogonal
    long = enc.encode([" ".join(f"w{i}" for i in range(50))])[0]
    assert abs(float(long.square().mean()) - 1.0) < 0.3
    red, blue = enc.encode(["red", "blue"])
    cos = float(red @ blue / (red.norm() * blue.norm()))
    assert abs(cos) < 4 / 256 ** 0.5                          # 4 σ of a random cosine


def test_encode_prompts_gives_each_modality_its_rows_and_the_null_row():
    out = encode_prompts(["x y", "z"], {"audio": HashedText(8), "video": HashedText(16)},
                         batch_size=1)
    assert out["audio"]["prompts"].shape == (2, 8) and out["video"]["prompts"].shape == (2, 16)
    assert torch.equal(out["audio"]["null"], torch.zeros(1, 8))


def test_the_world_captions_its_classes_and_the_vocabulary_is_a_param():
    for k in range(2, 9):
        caps = class_captions(SynthConfig(num_classes=k))
        assert len(set(caps)) == k and all(c.endswith("Hz tone") for c in caps)
    assert class_captions(SynthConfig(num_classes=4))[0] == "a red ball with a 500 Hz tone"
    vocab = ("one", "two", "three", "four", "spare")
    assert class_captions(SynthConfig(num_classes=4, vocabulary=vocab)) == list(vocab[:4])
    with pytest.raises(ConfigError, match="vocabulary has 2 captions for 4 classes"):
        build(SynthConfig, {"num_classes": 4, "vocabulary": ["a", "b"]}, "data.synth")
    with pytest.raises(ConfigError, match="repeats a caption"):
        build(SynthConfig, {"num_classes": 2, "vocabulary": ["a", "a"]}, "data.synth")


def test_condition_keys_are_validated():
    p = load_params(ROOT / "params.yaml")
    assert p.condition == "none" and p.cfg.audio == 2.0 and p.sample.prompts == ()
    with pytest.raises(ConfigError, match="condition must be one of none, caption"):
        load_params(ROOT / "params.yaml", {"condition": "text"})
    with pytest.raises(ConfigError, match="data.captions names a captions CSV for data.folder"):
        load_params(ROOT / "params.yaml", {"data.captions": "c.csv"})
    with pytest.raises(ConfigError, match="unknown key base.audio.pretrained.guidance_scale"):
        load_params(ROOT / "params.yaml", {"base.audio.pretrained.guidance_scale": 2.0})


# --------------------------------------------------------------------------- conditional tiny base
@pytest.fixture(scope="module")
def conditional_base(tmp_path_factory):
    cfg = load_params(ROOT / "params.yaml").base.audio
    cfg = dataclasses.replace(cfg, steps=4, warmup_steps=1, batch_size=4, log_every=2,
                              checkpoint_every=2)
    gen = torch.Generator().manual_seed(0)
    latents = torch.rand(12, 1, 32, 32, generator=gen) * 2 - 1
    cond = HashedText(8).encode([f"class {i % 3}" for i in range(12)])
    folder = tmp_path_factory.mktemp("cbase")
    summary = train_base(latents, cfg, folder, seed=0, cond=cond, uncond=torch.zeros(1, 8))
    return {"folder": folder, "cond": cond, "latents": latents, "cfg": cfg, "summary": summary}


def test_a_conditional_tiny_base_saves_loads_and_applies_cfg(conditional_base):
    base = load_base(conditional_base["folder"])
    assert isinstance(base, TinyBase) and base.cond_dim == 8
    cond = conditional_base["cond"][:3]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 32, 32, generator=gen)
    t = torch.tensor([900, 400, 20])
    base.cfg = dataclasses.replace(base.cfg, clip_sample=False)   # ε = ε_u + w(ε_c − ε_u) exactly
    with torch.no_grad():
        assert base.guidance_scale == 1.0                      # w = 1: the prompt alone
        e_u, e_c = base.eps(x, t), base.eps(x, t, cond)
        base.guidance_scale = 3.0
        e_3 = base.eps(x, t, cond)
        base.guidance_scale = 0.0
        e_0 = base.eps(x, t, cond)
    # the combination is done on one [uncond; cond] batch: equal to the separate passes up to
    # float32 rounding of batched kernels (a few ulps of outputs of order 1)
    torch.testing.assert_close(e_0, e_u, rtol=0, atol=1e-5)
    torch.testing.assert_close(e_3, e_u + 3.0 * (e_c - e_u), rtol=0, atol=1e-4)
    assert (e_c - e_u).abs().max() > 1e-3                      # the prompt is used
    with pytest.raises(ValueError, match=r"prompt embeddings \[3, 8\]"):
        base.eps(x, t, torch.zeros(3, 5))


def test_conditional_training_is_reproducible_and_an_unconditional_base_refuses_cond(
        conditional_base, tmp_path):
    c = conditional_base
    again = train_base(c["latents"], c["cfg"], tmp_path / "b", seed=0, cond=c["cond"],
                       uncond=torch.zeros(1, 8))
    assert again["final_loss"] == c["summary"]["final_loss"]
    a = load_base(c["folder"]).unet.state_dict()
    b = load_base(tmp_path / "b").unet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and "class_embedding.weight" in a
    plain = train_base(c["latents"], c["cfg"], tmp_path / "u", seed=0)
    assert plain["num_parameters"] < c["summary"]["num_parameters"]
    base = load_base(tmp_path / "u")
    with pytest.raises(ValueError, match="unconditional"):
        base.eps(torch.zeros(1, 1, 32, 32), torch.tensor([5]), c["cond"][:1])


# --------------------------------------------------------------------------- prompt table
def test_prompt_table_reads_what_encode_writes(tmp_path):
    prompts = ["a", "b c"]
    text = encode_prompts(prompts, {"audio": HashedText(4), "video": HashedText(6)})
    for m, tensors in text.items():
        save_tensors(tmp_path / text_file(m), tensors)
    write_json(tmp_path / TEXT_INDEX, {"prompts": prompts, "clip_prompt": [1, 0, 1]})
    table = PromptTable(tmp_path)
    assert table.captions() == ["b c", "a", "b c"]
    rows = table.index(["b c", "a"])
    assert rows.tolist() == [1, 0]
    assert torch.equal(table.embeddings("video", rows), text["video"]["prompts"][[1, 0]])
    assert table.null("audio").shape == (1, 4)
    with pytest.raises(KeyError, match="add them to sample.prompts"):
        table.index(["never encoded"])
    with pytest.raises(FileNotFoundError, match="condition: caption"):
        PromptTable(tmp_path / "nothing")


# --------------------------------------------------------------------------- prompt agreement
def test_prompt_agreement_counts_invalid_readings_as_disagreeing():
    video = [VideoReading(True, 0), VideoReading(True, 1), VideoReading(False), VideoReading(True, 2)]
    audio = [AudioReading(True, 0), AudioReading(True, 0), AudioReading(True, 1),
             AudioReading(True, 2)]
    m = pair_metrics(video, audio, num_classes=3, bootstrap=20, confidence=0.95, seed=0,
                     prompt_classes=np.array([0, 1, 1, -1]))
    assert m["prompt_agreement_video_n"] == 3 and m["prompt_agreement_video"] == pytest.approx(2 / 3)
    assert m["prompt_agreement_audio"] == pytest.approx(2 / 3)   # pair 1's audio reads class 0
    assert "prompt_agreement_audio" not in pair_metrics(video, audio, num_classes=3, bootstrap=20,
                                                        confidence=0.95, seed=0)


def test_prompted_classes_follow_the_pairs_that_evaluate_keeps(tmp_path):
    captions = class_captions(SynthConfig(num_classes=4))
    (tmp_path / "guided").mkdir()
    write_json(tmp_path / "guided" / "prompts.json",
               {"prompts": [captions[2], "a prompt of no class", captions[0]],
                "prompt_of": [0, 1, 2, 0, 1, 2, 0, 1]})
    keep = subsample(8, 3, seed=5)                      # eval.max_pairs = 3 of 8 pairs
    assert keep.tolist() != [0, 1, 2]                  # the kept pairs, not the first ones
    want = np.array([2, -1, 0, 2, -1, 0, 2, -1])[keep.numpy()]
    assert np.array_equal(prompt_classes(tmp_path, "guided", SynthConfig(), keep), want)
    assert prompt_classes(tmp_path, "baseline", SynthConfig(), keep) is None   # unprompted
