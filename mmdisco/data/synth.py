"""The embedded world: a coloured ball bounces on the floor and rings a tone at each contact.

Colour k <-> pitch k ties the modalities in meaning; floor-contact frames <-> tone onsets tie
them in time. Every clip comes with its ground truth (see /work/shared/design/synthav.md);
its ``contact_times`` are in seconds, so clip extraction turns them into each clip's
``contact_frames`` (it does so for every label field named ``<x>_times``).
Notation: F frames, H = W = size pixels, L samples, P bounce period (frames), K classes.
"""
from __future__ import annotations

import colorsys
import concurrent.futures
import json
import multiprocessing
from pathlib import Path

import numpy as np
from einops import rearrange

from mmdisco.config import ConfigError, SynthConfig
from mmdisco.data.media import write_av

LOW_HZ, HIGH_HZ = 500.0, 3000.0  # class pitch range; below 4 kHz so clips survive 8 kHz audio
BACKGROUND = 20.0                 # dark background level (0..255)
RADIUS = 0.12                     # ball radius as a fraction of the frame side
MARGIN = 0.03                     # gap between the ball and the frame edges, fraction of side
ATTACK_S = 0.004                  # tone attack, long enough to avoid a click
HARMONIC = 0.2                    # amplitude of the 2nd harmonic relative to the fundamental
VIDEO_OPTIONS = {"preset": "veryfast"}  # faster libx264 and aac encoders: half the render time
AUDIO_OPTIONS = {"aac_coder": "fast"}


# --------------------------------------------------------------------------- classes
def _check_k(num_classes: int) -> None:
    if not 2 <= num_classes <= 8:
        raise ConfigError(f"data.synth.num_classes must be >= 2 and <= 8; got {num_classes}")


def class_colours(num_classes: int) -> np.ndarray:
    """K saturated, bright colours with hues evenly around the wheel, uint8 [K, 3]."""
    _check_k(num_classes)
    rgb = [colorsys.hsv_to_rgb(k / num_classes, 1.0, 1.0) for k in range(num_classes)]
    return np.round(np.asarray(rgb) * 255).astype(np.uint8)


def class_pitches(num_classes: int) -> np.ndarray:
    """K pitches (Hz) spaced geometrically from 500 to 3000 Hz, float [K]."""
    _check_k(num_classes)
    return np.geomspace(LOW_HZ, HIGH_HZ, num_classes)


HUE_NAMES = ("red", "orange", "yellow", "chartreuse", "green", "spring green", "cyan", "azure",
             "blue", "violet", "magenta", "rose")   # every 30° of hue


def class_captions(cfg: SynthConfig) -> list[str]:
    """The caption of each class: ``cfg.vocabulary[k]``, or by default its colour and pitch in
    words, "a <colour> ball with a <pitch> Hz tone" (hues of K ≤ 8 classes get distinct names)."""
    if cfg.vocabulary:
        return list(cfg.vocabulary[:cfg.num_classes])
    names = [HUE_NAMES[round(12 * k / cfg.num_classes) % 12] for k in range(cfg.num_classes)]
    return [f"{'an' if name[0] in 'aeiou' else 'a'} {name} ball with a {round(float(hz))} Hz tone"
            for name, hz in zip(names, class_pitches(cfg.num_classes))]


# --------------------------------------------------------------------------- motion
def _triangle(x: np.ndarray, span: float) -> np.ndarray:
    """Reflect positions ``x`` into [0, span] (bounces off two walls)."""
    y = np.mod(x, 2 * span)
    return np.where(y > span, 2 * span - y, y)


def _trajectory(cfg: SynthConfig, rng: np.random.Generator, num_frames: int) -> dict:
    """Ball centre per frame and the bounce parameters that produced it."""
    size = cfg.size
    radius = RADIUS * size
    lo, hi = radius + MARGIN * size, size - 1 - radius - MARGIN * size
    period = int(rng.integers(cfg.min_period, cfg.max_period + 1))
    phase = int(rng.integers(0, period))
    height = float(rng.uniform(0.3, 0.6) * size)          # apex above the floor, pixels
    x_start = float(rng.uniform(lo, hi))
    x_speed = float(rng.uniform(0.1, 0.6) * size * rng.choice([-1.0, 1.0]))  # pixels / s
    frames = np.arange(num_frames)
    u = np.mod(frames - phase, period) / period             # 0 at each floor contact
    centre_y = hi - height * 4.0 * u * (1.0 - u)            # rows grow downwards
    centre_x = lo + _triangle(x_start - lo + x_speed * frames / cfg.fps, hi - lo)
    contacts = [int(f) for f in frames[(frames - phase) % period == 0]]
    return {"period": period, "phase": phase, "bounce_height": height, "radius": radius,
            "floor_y": hi, "x_start": x_start, "x_speed": x_speed,
            "centre_x": centre_x, "centre_y": centre_y, "contact_frames": contacts}


# --------------------------------------------------------------------------- rendering
def _render_video(cfg: SynthConfig, rng: np.random.Generator, motion: dict,
                  colour: np.ndarray) -> np.ndarray:
    """Draw the anti-aliased ball over a dark noisy background, uint8 [F, H, W, 3]."""
    grid = np.arange(cfg.size, dtype=np.float32)
    cx = rearrange(motion["centre_x"].astype(np.float32), "f -> f 1 1")
    cy = rearrange(motion["centre_y"].astype(np.float32), "f -> f 1 1")
    dist = np.sqrt((rearrange(grid, "w -> 1 1 w") - cx) ** 2
                   + (rearrange(grid, "h -> 1 h 1") - cy) ** 2)
    alpha = rearrange(np.clip(motion["radius"] + 0.5 - dist, 0.0, 1.0), "f h w -> f h w 1")
    image = BACKGROUND + alpha * (colour.astype(np.float32) - BACKGROUND)
    noise = rng.standard_normal(image.shape, dtype=np.float32) * (cfg.video_noise * 127.5)
    return np.clip(np.round(image + noise), 0, 255).astype(np.uint8)


def _tone(cfg: SynthConfig, pitch: float, amplitude: float) -> np.ndarray:
    """One decaying tone: fundamental + small 2nd harmonic, short attack, exponential decay."""
    sr = cfg.sample_rate
    t = np.arange(int(np.ceil(8 * cfg.tone_decay * sr)) + 1) / sr
    wave = np.sin(2 * np.pi * pitch * t)
    if 2 * pitch < 0.45 * sr:  # never alias the harmonic
        wave = wave + HARMONIC * np.sin(2 * np.pi * 2 * pitch * t)
    attack = np.clip(t / ATTACK_S, 0.0, 1.0)
    envelope = np.sin(0.5 * np.pi * attack) ** 2 * np.exp(-t / cfg.tone_decay)
    return amplitude * envelope * wave / (1.0 + HARMONIC)


def _render_audio(cfg: SynthConfig, rng: np.random.Generator, contact_times: list[float],
                  pitch: float, amplitude: float) -> np.ndarray:
    """Sum a tone starting at each contact time over low background noise, float32 [L]."""
    num_samples = round(cfg.seconds * cfg.sample_rate)
    audio = rng.standard_normal(num_samples) * cfg.audio_noise
    tone = _tone(cfg, pitch, amplitude)
    for t in contact_times:
        start = round(t * cfg.sample_rate)
        n = min(len(tone), num_samples - start)
        if n > 0:
            audio[start:start + n] += tone[:n]
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def _check_cfg(cfg: SynthConfig) -> None:
    """Reject settings under which the world loses its guarantees."""
    cfg.validate("data.synth")
    _check_k(cfg.num_classes)
    if cfg.max_period > cfg.fps:
        raise ConfigError(f"data.synth.max_period ({cfg.max_period}) must be <= data.synth.fps "
                          f"({cfg.fps}) so that every 1-second window holds a floor contact")
    if cfg.size % 2:
        raise ConfigError(f"data.synth.size must be even for H.264 yuv420p; got {cfg.size}")


def render_clip(cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render one clip: video uint8 [F, H, W, 3], audio float32 [L] and its ground truth."""
    _check_cfg(cfg)
    num_frames = round(cfg.seconds * cfg.fps)
    k = int(rng.integers(cfg.num_classes))
    colour = class_colours(cfg.num_classes)[k]
    pitch = float(class_pitches(cfg.num_classes)[k])
    motion = _trajectory(cfg, rng, num_frames)
    amplitude = float(rng.uniform(0.4, 0.7))
    contact_times = [f / cfg.fps for f in motion["contact_frames"]]
    video = _render_video(cfg, rng, motion, colour)
    audio = _render_audio(cfg, rng, contact_times, pitch, amplitude)
    truth = {"class": k, "caption": class_captions(cfg)[k], "pitch_hz": pitch, "colour": [int(c) for c in colour],
             "contact_times": contact_times, "amplitude": amplitude,
             "fps": cfg.fps, "sample_rate": cfg.sample_rate, "seconds": cfg.seconds,
             "num_frames": num_frames, "num_samples": len(audio), "size": cfg.size,
             **{key: (val.tolist() if isinstance(val, np.ndarray) else val)
                for key, val in motion.items()}}
    return video, audio, truth


# --------------------------------------------------------------------------- world
def _clip_name(i: int) -> str:
    return f"clip_{i:05d}.mp4"


def _render_file(job: tuple[str, SynthConfig, int, int]) -> dict:
    """Render clip ``i`` (seeded by [seed, i]) into ``folder``; return its truth record."""
    folder, cfg, seed, i = job
    rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
    video, audio, truth = render_clip(cfg, rng)
    write_av(Path(folder) / _clip_name(i), video, cfg.fps, audio, cfg.sample_rate,
             video_options=VIDEO_OPTIONS, audio_options=AUDIO_OPTIONS)
    return {"file": _clip_name(i), **truth}


def render_world(out_dir: str | Path, cfg: SynthConfig, seed: int, workers: int = 2) -> list[dict]:
    """Render ``cfg.num_files`` clips plus ``truth.json`` into ``out_dir``, atomically."""
    from mmdisco.io import atomic_path  # imported lazily: it pulls in torch

    _check_cfg(cfg)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        jobs = [(str(tmp), cfg, seed, i) for i in range(cfg.num_files)]
        if workers == 1:
            records = [_render_file(job) for job in jobs]
        else:
            ctx = multiprocessing.get_context("fork" if "fork" in
                                              multiprocessing.get_all_start_methods() else "spawn")
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                chunk = max(1, min(64, cfg.num_files // (4 * workers)))
                records = list(pool.map(_render_file, jobs, chunksize=chunk))
        (tmp / "truth.json").write_text(json.dumps(records, indent=1) + "\n")
    return records
