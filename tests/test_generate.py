"""`mmdisco generate` and the released discriminators in the pipeline (`guidance.module: released`).

Fast: the params rules, the fit check, recording a released checkpoint, and every bad input of
`generate` and of `train_discriminator` failing with its key or file before anything is written
(on stub folders: the checks run before any model loads). Slow (each runs `dvc repro` in a
throw-away project): generation from a class caption in the embedded world, its files read back
to the prompted class; and a released-architecture module of random weights guiding tiny random
AudioLDM / AnimateDiff components through `train_discriminator`, `sample`, `evaluate` and
`generate`. Nothing is downloaded.
"""
from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from mmdisco.checksums import sha256_file
from mmdisco.cli import main as cli
from mmdisco import schema
from mmdisco.config import ConfigError, load_params
from mmdisco.data.synth import class_captions, class_colours, class_pitches
from mmdisco.encoders import encoder_from_state
from mmdisco.eval.decoders import decode_audios, decode_videos
from mmdisco.guidance.release import SETTINGS, ReleasedDiscriminator, build_released, check_fits
from mmdisco.guidance.store import load_guide, record_released
from mmdisco.io import load_tensors, read_json, save_tensors, write_json
from mmdisco.schema import SynthConfig
from support.captioned_media import media_folder
from support.pipeline import SMALL, STAGES, ran
from support.project import ROOT, make_project, run
from support.tiny_pretrained import animatediff_components, audioldm_components, save_components

SETTING = "audioldm_animediff_vggsound"
LATENT_A, LATENT_V = (8, 16, 16), (8, 4, 8, 8)        # tests/support/tiny_pretrained.py's


def params_file(tmp_path: Path, **overrides) -> Path:
    """The repository's params.yaml with dotted ``overrides``."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in overrides.items():
        node, keys = raw, dotted.split(".")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def released(checkpoint, setting=SETTING, **more) -> dict:
    return {"guidance.module": "released", "guidance.released.checkpoint": str(checkpoint),
            "guidance.released.setting": setting, **more}


# --------------------------------------------------------------------------- params
def test_the_schema_names_the_released_settings():
    assert schema.RELEASED_SETTINGS == tuple(SETTINGS)
    assert load_params(ROOT / "params.yaml").guidance.module == "trained"


@pytest.mark.parametrize("overrides, match", [
    ({"guidance.module": "released"}, r"guidance\.released\.setting must name"),
    ({"guidance.module": "released", "guidance.released.setting": SETTING},
     r"guidance\.released\.checkpoint must name .*audioldm_animediff_vggsound\.pt"),
    ({"guidance.released.setting": "audioldm"},
     r"guidance\.released\.setting must be one of audioldm_animediff_vggsound, "
     r"auffusion_videocrafter2_vggsound, mmdiffusion_landscape, mmdiffusion_aist\+\+"),
    ({"guidance.module": "pretrained"}, r"guidance\.module must be one of trained, released"),
])
def test_released_params_are_checked_at_load(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_params(params_file(tmp_path, **overrides))


# --------------------------------------------------------------------------- fitting the bases
def test_the_fit_check_names_every_mismatch():
    ok = dict(audio_shape=LATENT_A, video_shape=LATENT_V, text_audio=(512,),
              text_video=(16, 768))
    assert check_fits(SETTING, **ok, base_kinds=("audioldm", "animatediff")) == []
    note, = check_fits(SETTING, **ok, base_kinds=("tiny", "tiny"))
    assert "trained against audioldm / animatediff" in note
    with pytest.raises(ValueError) as e:   # the embedded world's tiny bases
        check_fits(SETTING, audio_shape=(1, 32, 32), video_shape=(8, 3, 16, 16),
                   text_audio=(64,), text_video=(64,))
    msg = str(e.value)
    assert "audio latents are [1, 32, 32]" in msg and "C = 8" in msg
    assert "video latents are [8, 3, 16, 16]" in msg and "C = 4" in msg
    assert "prompt embeddings are [64]" in msg and "AudioLDM" in msg
    with pytest.raises(ValueError, match=r"needs the bases' prompt embeddings \(condition: capt"):
        check_fits(SETTING, audio_shape=LATENT_A, video_shape=LATENT_V)
    with pytest.raises(ValueError, match="it takes a waveform"):
        check_fits("mmdiffusion_landscape", audio_shape=LATENT_A, video_shape=(8, 3, 8, 8))
    with pytest.raises(ValueError, match="make 202 fusion positions; it has 128"):
        check_fits("auffusion_videocrafter2_vggsound", audio_shape=(4, 100, 16),
                   video_shape=(100, 4, 8, 8), text_audio=(768,), text_video=(1024,))


def test_a_recorded_released_checkpoint_loads_as_itself(tmp_path):
    torch.manual_seed(0)
    module = build_released(SETTING)
    source = tmp_path / f"{SETTING}.pt"
    torch.save({f"residual_predictor.{k}": v for k, v in module.state_dict().items()}, source)
    folder = tmp_path / "discriminator"
    folder.mkdir()
    loaded, record = record_released(source, SETTING, folder)
    assert record["sha256"] == sha256_file(source) == sha256_file(folder / "released.pt")
    assert record["num_parameters"] == SETTINGS[SETTING].params
    assert read_json(folder / "discriminator.json") == record
    again = load_guide(folder)
    assert type(again) is ReleasedDiscriminator and again.setting == SETTING
    assert all(torch.equal(again.state_dict()[k], v) for k, v in module.state_dict().items())
    with open(folder / "released.pt", "ab") as f:   # a changed copy is refused
        f.write(b"\0")
    with pytest.raises(ValueError, match="SHA-256 differs"):
        load_guide(folder)


# --------------------------------------------------------------------------- bad input
def stub_pipeline(root: Path, *, caption: bool = True) -> dict[str, str]:
    """Folders shaped like the pipeline's outputs of the embedded world (``base.json``,
    ``encoders.json``, the prompt table): enough for every check that runs before loading."""
    for modality, shape in (("audio", [1, 32, 32]), ("video", [8, 3, 16, 16])):
        write_json(root / f"base_{modality}/base.json",
                   {"kind": "tiny", "modality": modality, "latent_shape": shape})
    write_json(root / "latents/encoders.json", {"fps": 8, "sample_rate": 8000})
    if caption:
        write_json(root / "latents/text.json", {"prompts": ["a"], "clip_prompt": [0],
                                                "encoders": {}})
        for m in ("audio", "video"):
            save_tensors(root / f"latents/text_{m}.safetensors",
                         {"prompts": torch.zeros(1, 64), "null": torch.zeros(1, 64)})
    return {"--audio-base": str(root / "base_audio"), "--video-base": str(root / "base_video"),
            "--latents": str(root / "latents"), "--discriminator": str(root / "discriminator"),
            "--critic": str(root / "critic")}


def generate(params: Path, folders: dict, out: Path, *extra: str):
    args = ["generate", "--prompt", "a red ball", "--per-prompt", "2", "--steps", "2",
            "--out", str(out), "--params", str(params),
            *[x for kv in folders.items() for x in kv], *extra]
    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize("case, match", [
    ("not caption", r"condition is none: prompts need text-conditional bases"),
    ("no discriminator", r"no trained discriminator in .*discriminator: run `dvc repro "
                         r"train_discriminator` or set guidance\.module: released"),
    ("no critic", r"no critic in .*critic and guidance\.critic_weight is 2\.0: run `dvc repro "
                  r"train_critic` or set guidance\.critic_weight: 0"),
    ("missing checkpoint", r"guidance\.released\.checkpoint: '.*nowhere\.pt' is not a file; "
                           r"download audioldm_animediff_vggsound\.pt from https://huggingface"),
    ("unknown setting", r"guidance\.released\.setting must be one of audioldm_animediff_vggsound"),
    ("not fitting", r"the released discriminator audioldm_animediff_vggsound does not fit these "
                    r"bases: audio latents are \[1, 32, 32\]"),
    ("no base", r"base_audio/base\.json is missing.*dvc repro train_base_audio train_base_video"),
    ("no prompt table", r"latents/text\.json is missing: the latents were encoded with "
                        r"condition: none"),
    ("out exists", r"--out .* exists and is not a folder `mmdisco generate` wrote"),
])
def test_bad_input_fails_naming_the_key_or_file_and_writes_nothing(tmp_path, case, match):
    folders = stub_pipeline(tmp_path / "pipe", caption=case != "no prompt table")
    checkpoint = tmp_path / "ckpt.pt"
    checkpoint.write_bytes(b"never read: the shapes are checked first")
    overrides = {"condition": "caption"}
    overrides.update({
        "not caption": {"condition": "none"},
        "no discriminator": {"guidance.critic_weight": 0.0},
        "no critic": {},
        "missing checkpoint": released(tmp_path / "nowhere.pt", **{"guidance.critic_weight": 0.0}),
        "unknown setting": released(checkpoint, "audioldm"),
        "not fitting": released(checkpoint, **{"guidance.critic_weight": 0.0}),
        "no base": {}, "no prompt table": {}, "out exists": {},
    }[case])
    if case == "no critic":
        write_json(tmp_path / "pipe/discriminator/discriminator.json", {"kind": "discriminator"})
    if case == "no base":
        (tmp_path / "pipe/base_audio/base.json").unlink()
    out = tmp_path / "out"
    if case == "out exists":
        out.mkdir()
        (out / "mine.txt").write_text("keep")
    params = params_file(tmp_path, **overrides)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = generate(params, folders, out)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert re.search(match, " ".join(result.output.split())), result.output
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_train_discriminator_refuses_a_missing_released_checkpoint(tmp_path):
    folders = stub_pipeline(tmp_path / "pipe")
    params = params_file(tmp_path, **released(tmp_path / "nowhere.pt"), condition="caption")
    out = tmp_path / "models/discriminator"
    result = CliRunner().invoke(cli, [
        "train-discriminator", "--params", str(params), "--latents", folders["--latents"],
        "--audio-base", folders["--audio-base"], "--video-base", folders["--video-base"],
        "--out", str(out), "--metrics", str(tmp_path / "m.json"),
        "--plot", str(tmp_path / "p.csv"), "--checkpoints", str(tmp_path / "ck")])
    assert result.exit_code != 0 and "guidance.released.checkpoint" in result.output
    assert not out.exists() and not (tmp_path / "m.json").exists()


# --------------------------------------------------------------------------- reading files back
def read_mp4(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Frames uint8 ``[F, H, W, 3]``, mono audio float ``[L]`` and its rate, decoded by PyAV."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        chunks = [f.to_ndarray().astype(np.float32).mean(axis=0)
                  for f in container.decode(audio=0)]
    return np.stack(frames), np.concatenate(chunks), rate


def classes_from_files(files: list[Path], encoders: dict, num_classes: int,
                       side: int) -> list[tuple[int, int]]:
    """The (audio, video) class the world's decoders read off each mp4: frames shrunk back to
    the latent size by block means, sound through the fitted log-mel encoder."""
    mel = encoder_from_state(encoders["audio"])
    videos, sounds = [], []
    for path in files:
        frames, sound, rate = read_mp4(path)
        assert rate == encoders["sample_rate"]
        k = frames.shape[1] // side
        small = frames.reshape(len(frames), side, k, side, k, 3).mean(axis=(2, 4))
        videos.append(np.round(small).astype(np.uint8))
        n = int(encoders["sample_rate"] * len(frames) / encoders["fps"])
        sounds.append(np.pad(sound, (0, max(0, n - len(sound))))[:n])
    a = mel.encode(torch.from_numpy(np.stack(sounds)))
    readings_a = decode_audios(mel.to_db(a).numpy(), mel.mel_frequencies().numpy(),
                               class_pitches(num_classes), mel_frame_rate=mel.frame_rate,
                               fps=encoders["fps"], num_video_frames=len(videos[0]))
    readings_v = decode_videos(np.stack(videos), class_colours(num_classes))
    return [(ra.cls if ra.valid else -1, rv.cls if rv.valid else -1)
            for ra, rv in zip(readings_a, readings_v)]


# --------------------------------------------------------------------------- end to end
# The embedded world with prompts, bases trained just long enough for the class to come out at
# 3 sampler steps. Measured on this machine (16 pairs, 4 per class caption): 200 / 400 base
# steps gave the prompted pitch class in 16 of 16 pairs and the prompted colour in 12 of 16, the
# other 4 videos unreadable, never another class (100 / 200 steps: 14 and 1 of 16). The test's
# 4 pairs read (0, 0), (0, -), (2, -), (2, 2): so it asserts what is robust, that no reading
# contradicts the prompt, that the sound carries it in 3 of 4 pairs or more and the picture at
# least once; the discriminator and critic stay barely trained (SMALL).
CAPTION_WORLD = {
    **SMALL, "condition": "caption", "data.synth.num_files": 64,
    "base.audio.steps": 200, "base.audio.warmup_steps": 10, "base.audio.batch_size": 32,
    "base.video.steps": 400, "base.video.warmup_steps": 10, "base.video.batch_size": 32,
    "base.audio.checkpoint_every": 1000, "base.video.checkpoint_every": 1000,
}
RECORD_KEYS = {"prompts", "per_prompt", "seed", "guided", "guide", "sampler", "cfg", "guidance",
               "condition", "bases", "text_encoders", "latents", "files"}


@pytest.mark.slow
def test_generate_from_class_captions_in_the_embedded_world(tmp_path):
    proj = make_project(tmp_path / "proj", CAPTION_WORLD)
    env = {"MMDISCO_THREADS": "1"}
    run(["dvc", "repro", "train_discriminator", "train_critic"], proj, env=env)
    captions = class_captions(SynthConfig())
    prompts = [captions[0], captions[2]]
    out = tmp_path / "generated"
    result = run(["mmdisco", "generate", "--prompt", prompts[0], "--prompt", prompts[1],
                  "--per-prompt", "2", "--steps", "3", "--out", str(out), "--save-latents"],
                 proj, env=env)
    assert "generate: batch 1/1" in result.stdout, result.stdout

    record = read_json(out / "generate.json")
    assert set(record) == RECORD_KEYS
    assert record["prompts"] == prompts and record["per_prompt"] == 2 and record["guided"]
    assert record["guide"]["module"] == "trained"
    assert record["guide"]["kind"] == "conditional_discriminator"
    assert record["sampler"]["steps"] == 3 and record["text_encoders"]["audio"]["kind"] == "hashed"
    names = [f"generated_p{j:03d}_{k:03d}.mp4" for j in range(2) for k in range(2)]
    assert [f["file"] for f in record["files"]] == names
    assert [f["prompt_index"] for f in record["files"]] == [0, 0, 1, 1]
    assert len({f["seed"] for f in record["files"]}) == 4
    assert sorted(p.name for p in out.glob("*.mp4")) == names

    encoders = read_json(proj / "data/latents/encoders.json")
    video = load_tensors(out / "video.safetensors")["latents"]
    for name in names:        # each file has 8 frames and about a second of sound
        frames, sound, rate = read_mp4(out / name)
        assert frames.shape[0] == video.shape[1] and rate == encoders["sample_rate"]
        assert abs(len(sound) - rate) < 0.1 * rate and np.abs(sound).max() > 0
    read = classes_from_files([out / n for n in names], encoders, 4, side=video.shape[-1])
    wanted = [0, 0, 2, 2]
    assert all(c in (-1, w) for pair, w in zip(read, wanted) for c in pair), read
    assert sum(a == w for (a, _), w in zip(read, wanted)) >= 3, read
    assert sum(v == w for (_, v), w in zip(read, wanted)) >= 1, read

    # the same seed without guidance: the unguided twins, recorded as such
    twins = tmp_path / "unguided"
    run(["mmdisco", "generate", "--prompt", prompts[0], "--prompt", prompts[1], "--per-prompt",
         "2", "--steps", "3", "--out", str(twins), "--save-latents", "--no-guidance"], proj,
        env=env)
    unguided = read_json(twins / "generate.json")
    assert not unguided["guided"] and unguided["guide"] == {"module": None}
    assert [f["seed"] for f in unguided["files"]] == [f["seed"] for f in record["files"]]
    assert not torch.equal(load_tensors(twins / "video.safetensors")["latents"], video)


# The released architecture on tiny random AudioLDM / AnimateDiff components whose latents and
# text encoders have the real layouts (8-channel audio, 4-channel video, CLAP 512, CLIP 768):
# the real setting's module itself fits them, so no test-only setting is needed.
def released_world(tmp_path: Path) -> tuple[dict, Path]:
    weights = tmp_path / "weights"
    save_components(audioldm_components(text_dim=512), weights / "audioldm")
    video = animatediff_components(text_dim=768)
    save_components(video, weights / "sd15")
    video["motion_adapter"].save_pretrained(weights / "motion_adapter")
    folder, captions = media_folder(tmp_path / "media")
    torch.manual_seed(3)
    checkpoint = tmp_path / f"{SETTING}.pt"
    torch.save(build_released(SETTING).state_dict(), checkpoint)
    overrides = {
        "condition": "caption", "device": "cpu", "data.source": "folder",
        "data.folder": str(folder), "data.captions": str(captions),
        "data.clip.seconds": 0.64, "data.clip.hop_seconds": 0.64, "data.clip.fps": 25,
        "data.clip.size": 16, "data.clip.sample_rate": 8000, "data.clip.workers": 1,
        "encoders.audio.kind": "audioldm", "encoders.audio.model": str(weights / "audioldm"),
        "encoders.audio.device": "cpu", "encoders.video.kind": "sd_vae",
        "encoders.video.model": str(weights / "sd15"), "encoders.video.device": "cpu",
        "encoders.batch_size": 8,
        "base.audio.kind": "audioldm", "base.audio.pretrained.model": str(weights / "audioldm"),
        "base.audio.pretrained.device": "cpu",
        "base.video.kind": "animatediff", "base.video.pretrained.model": str(weights / "sd15"),
        "base.video.pretrained.motion_adapter": str(weights / "motion_adapter"),
        "base.video.pretrained.device": "cpu", "cfg.audio": 2.5, "cfg.video": 7.5,
        "fakes.num_pairs": 2, "fakes.steps": 1, "fakes.batch_size": 2,
        "critic.width": 8, "critic.time_dim": 16, "critic.dim": 8, "critic.steps": 2,
        "critic.batch_size": 4, "critic.heldout": 8, "critic.eval_every": 2,
        "critic.log_every": 1, "critic.checkpoint_every": 2,
        "guidance.scale": 1.0, "guidance.audio_weight": 1.0, "guidance.video_weight": 8.0,
        "guidance.critic_weight": 0.0, **released(checkpoint),
        "sample.num_samples": 2, "sample.steps": 2, "sample.batch_size": 2, "sample.media": 2,
        "sample.prompts": ["a red square with a tone"], "eval.bootstrap": 20,
        "eval.av_align_pairs": 2,
    }
    return overrides, checkpoint


@pytest.mark.slow
def test_a_released_module_guides_the_pipeline_and_generate(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    overrides, checkpoint = released_world(tmp_path)
    proj = make_project(tmp_path / "proj", overrides)
    first = run(["dvc", "repro"], proj)
    assert ran(first.stdout) == set(STAGES), first.stdout
    assert "recorded the released audioldm_animediff_vggsound" in first.stdout

    # train_discriminator recorded a copy; sample loaded it through load_released
    record = read_json(proj / "models/discriminator/discriminator.json")
    assert record["kind"] == "released" and record["setting"] == SETTING
    assert record["sha256"] == sha256_file(checkpoint) and record["num_parameters"] == 33_261_313
    metrics = read_json(proj / "metrics/discriminator.json")
    assert metrics["module"] == "released" and metrics["steps"] == 0 and metrics["notes"] == []
    assert metrics["sha256"] == record["sha256"] and metrics["mlflow_run_id"]
    guided = load_tensors(proj / "data/samples/guided/video.safetensors")["latents"]
    baseline = load_tensors(proj / "data/samples/baseline/video.safetensors")["latents"]
    assert guided.shape == baseline.shape == (2, 16, 4, 8, 8) and torch.isfinite(guided).all()
    assert not torch.equal(guided, baseline)             # the released module guides
    assert read_json(proj / "metrics/eval.json")["guided"]["av_align_n"] == 2

    out = tmp_path / "generated"
    run(["mmdisco", "generate", "--prompt", "a blue square with a tone", "--per-prompt", "2",
         "--steps", "2", "--out", str(out)], proj)
    gen = read_json(out / "generate.json")
    assert gen["guide"]["module"] == "released" and gen["guide"]["setting"] == SETTING
    assert gen["guide"]["sha256"] == record["sha256"] and gen["guide"]["scales"] == [1.0, 8.0]
    assert gen["text_encoders"]["audio"]["kind"] == "audioldm"
    for f in gen["files"]:
        frames, sound, _ = read_mp4(out / f["file"])
        assert frames.shape[0] == 16 and len(sound) > 0
    assert run(["dvc", "repro"], proj).stdout.count("Running stage") == 0
