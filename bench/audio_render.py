"""How the rendered sound compares with the real files: tonality, round trip, spectrograms.

    python bench/audio_render.py [PROJECT] [--clips 256] [--figure docs/img/audio-render.png]

Reads a project that has run the pipeline (default: this repository). Every figure is taken on
decoded media FILES (what a player plays), never on latents:

- ``tonal_fraction``: share of the energy above 200 Hz within ±4% of a class pitch or its 2nd
  harmonic (``mmdisco.eval.tonality``), for the original files (the clip's window of
  ``data/raw``), real latents rendered by the audio encoder and written as mp4 like the samples,
  and the ``sample`` stage's baseline and guided mp4s;
- ``round_trip``: real latents rendered to sound, written to mp4, decoded, resampled and
  encoded again; the share of clips whose ground-truth reading (validity, pitch class, onset
  frames) is unchanged;
- a figure with the spectrograms of one real file, its rendered latent and a guided sample.

Prints one JSON object; no asserts.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click
import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmdisco.data.media import write_av  # noqa: E402
from mmdisco.data.shards import load_clips  # noqa: E402
from mmdisco.data.synth import class_pitches  # noqa: E402
from mmdisco.encoders import encoder_from_state  # noqa: E402
from mmdisco.eval.decoders import decode_audios  # noqa: E402
from mmdisco.eval.tonality import media_pitch_fraction, pitch_energy_fraction, read_sound  # noqa: E402
from mmdisco.io import load_tensors, read_json  # noqa: E402


def _summary(x: np.ndarray) -> dict:
    x = x[np.isfinite(x)]
    return {"mean": round(float(x.mean()), 4), "p05": round(float(np.percentile(x, 5)), 4),
            "n": int(len(x))}


def _resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    import torchaudio

    t = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    return torchaudio.functional.resample(t, rate, target).numpy() if rate != target else wave


def _spectrogram_panel(ax, wave: np.ndarray, rate: int, title: str) -> None:
    floor = 1e-6 * np.random.default_rng(0).standard_normal(len(wave))  # exact silence: -120 dB
    ax.specgram(wave + floor, NFFT=512, Fs=rate, noverlap=448, cmap="magma", vmin=-120)
    ax.set_ylim(0, 4000)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("s")


@click.command()
@click.argument("project", type=click.Path(file_okay=False, path_type=Path), default=".")
@click.option("--clips", "n", default=256, show_default=True, help="real clips measured")
@click.option("--figure", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the spectrogram comparison (PNG) here")
def main(project: Path, n: int, figure: Path | None) -> None:
    enc = read_json(project / "data/latents/encoders.json")
    mel = encoder_from_state(enc["audio"])
    sr, fps = enc["sample_rate"], enc["fps"]
    _, audio, index = load_clips(project / "data/clips")
    latents = load_tensors(project / "data/latents/audio.safetensors")["latents"]
    k = yaml.safe_load((project / "params.yaml").read_text())["data"]["synth"]["num_classes"]
    pitches = class_pitches(k)
    rows = np.linspace(0, len(latents) - 1, min(n, len(latents))).astype(int)
    out: dict = {"classes": k, "clips": len(rows)}

    # the original files, each cut to its clip's window
    originals = []
    for i in rows:
        c = index["clips"][i]
        wave, rate = read_sound(project / "data/raw" / c["source"])
        originals.append((wave[round(c["start_s"] * rate):][: round(len(audio[i]) / sr * rate)], rate))
    out["tonal_fraction"] = {"original_files": _summary(np.array(
        [pitch_energy_fraction(w[None], r, pitches)[0] for w, r in originals]))}

    # real latents rendered, written as mp4 exactly like the samples, decoded again
    with torch.no_grad():
        rendered = mel.decode(latents[rows]).numpy()
    silent_video = np.zeros((int(len(audio[0]) / sr * fps), 16, 16, 3), np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for j, wave in enumerate(rendered):
            paths.append(Path(tmp) / f"r{j:04d}.mp4")
            write_av(paths[-1], silent_video, fps, wave, sr)
        out["tonal_fraction"]["rendered_real_latents"] = _summary(media_pitch_fraction(paths, pitches))
        first_rendered = read_sound(paths[0])
        back = []
        for p in paths:
            wave, rate = read_sound(p)
            wave = _resample(wave, rate, sr)[: mel.num_samples]
            back.append(np.pad(wave, (0, mel.num_samples - len(wave))))
    again = mel.encode(torch.from_numpy(np.stack(back)))
    kw = dict(mel_frame_rate=mel.frame_rate, fps=fps,
              num_video_frames=int(len(audio[0]) / sr * fps))
    hz = mel.mel_frequencies().numpy()
    before = decode_audios(mel.to_db(latents[rows]).numpy(), hz, pitches, **kw)
    after = decode_audios(mel.to_db(again).numpy(), hz, pitches, **kw)
    same = [(a.valid, a.cls, a.onset_frames) == (b.valid, b.cls, b.onset_frames)
            for a, b in zip(before, after)]
    out["round_trip"] = {"same_reading": round(float(np.mean(same)), 4),
                         "same_class": round(float(np.mean([a.cls == b.cls for a, b in zip(before, after)])), 4),
                         "latent_mean_abs_diff": round(float((again - latents[rows]).abs().mean()), 4)}

    samples = project / "data/samples"
    media = {name: sorted((samples / name / "media").glob("*.mp4")) for name in ("baseline", "guided")}
    for name, files in media.items():
        if files:   # the mp4s the sample stage wrote (and MLflow shows)
            out["tonal_fraction"][f"{name}_media"] = _summary(media_pitch_fraction(files, pitches))
        lat = samples / name / "audio.safetensors"
        if lat.is_file():   # more of that set's latents, rendered and written the same way
            a = load_tensors(lat)["latents"]
            a = a[np.linspace(0, len(a) - 1, min(n, len(a))).astype(int)]
            with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
                files = []
                for j, wave in enumerate(mel.decode(a).numpy()):
                    files.append(Path(tmp) / f"{name}{j:04d}.mp4")
                    write_av(files[-1], silent_video, fps, wave, sr)
                out["tonal_fraction"][f"{name}_rendered"] = _summary(
                    media_pitch_fraction(files, pitches))

    if figure is not None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), sharey=True)
        w, r = originals[0]
        _spectrogram_panel(axes[0], w, r, f"real file ({index['clips'][rows[0]]['source']})")
        _spectrogram_panel(axes[1], *first_rendered, "its latent, rendered (mp4)")
        if media["guided"]:
            wave, rate = read_sound(media["guided"][0])
            _spectrogram_panel(axes[2], wave, rate, f"guided sample ({media['guided'][0].name})")
        axes[0].set_ylabel("Hz")
        for p in pitches:
            for ax in axes:
                ax.axhline(p, color="white", lw=0.4, ls=":")
        fig.tight_layout()
        figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(figure, dpi=110)
        out["figure"] = str(figure)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
