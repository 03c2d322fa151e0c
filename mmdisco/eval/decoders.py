"""Ground-truth decoders of the embedded world (no learning): what class, and when it bounces.

Video (uint8 ``[F, H, W, 3]``) → ball colour class and floor-contact frames; audio (dB mel
``[T, M]``, the frozen log-mel encoder's view, since generated audio exists only as mel
latents) → pitch class and tone-onset frames, given as VIDEO frame indices. Both decoders
return a reading with ``valid`` False and a ``reason`` for anything the world never makes
(no ball, two balls, an off-palette colour, silence, noise, an off-scale pitch), and never
raise on bad content; only wrong shapes raise. See /work/shared/design/synthav.md.

Notation: F video frames, H × W pixels, K classes, T mel frames, M mel bins. Pixel rows grow
downwards; a pixel's coordinate is its centre (row 0 = 0.0).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from einops import rearrange
from scipy import ndimage

from mmdisco.data.synth import MARGIN, RADIUS

# ---- video thresholds (brightness = max over RGB, 0..255)
MIN_CONTRAST = 48.0    # a frame shows a ball only if its brightest pixel is this far above the bg
BALL_LEVEL = 0.5       # ball pixels: brighter than bg + BALL_LEVEL·(peak − bg) (half maximum)
AREA_RANGE = (0.5, 1.6)  # ball area, as a multiple of the rendered disc area π (RADIUS·H)²
MIN_FILL = 0.45        # ball area / bounding-box area (a disc fills π/4 ≈ 0.79)
MAX_STRAY = 0.5        # bright pixels outside the ball, at most this fraction of the ball's area
COLOUR_TOL = 0.35      # largest distance to a class colour in normalised chroma (see _chroma)
FLOOR_BAND = 0.08      # a contact reaches within FLOOR_BAND·H of the floor row (or below it)
MIN_DROP = 0.05        # ... and lies at least MIN_DROP·H lower than its neighbouring frames

# ---- audio thresholds (envelope = total mel power per frame, in dB)
RISE_DB = 6.0          # an onset is a jump of the envelope by at least this from the frame before
MIN_SNR_DB = 15.0      # its peak stands this far above the clip's floor (10th percentile)
PEAK_RANGE_DB = 20.0   # and within this of the clip's loudest frame
FLOOR_PERCENTILE = 10.0
PITCH_FRAMES = 2       # mel frames from the onset on whose spectrum gives the pitch
MIN_TONALITY = 0.5     # power in the dominant band ±1 bin over the total at the onsets
PITCH_TOL_OCT = 0.25   # largest distance to a class pitch, octaves (tighter for large K)
CHUNK = 1024           # clips decoded at once


@dataclass
class VideoReading:
    """What the video decoder read off one clip."""

    valid: bool
    cls: int = -1
    contact_frames: list[int] = field(default_factory=list)
    reason: str = ""


@dataclass
class AudioReading:
    """What the audio decoder read off one clip's dB mel spectrogram."""

    valid: bool
    cls: int = -1
    onset_frames: list[int] = field(default_factory=list)
    reason: str = ""


# --------------------------------------------------------------------------- video
def floor_row(height: int) -> float:
    """Row of the ball centre at a floor contact in a frame of ``height`` rows.

    The world puts the centre at ``size·(1 − RADIUS − MARGIN) − 1`` rendered pixels; resizing
    to ``height`` rows maps that to about ``height·(1 − RADIUS − MARGIN) − 0.5``.
    """
    return height * (1.0 - RADIUS - MARGIN) - 0.5


def _chroma(rgb: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Colour over the background, scaled so its largest channel is 1 (blur and dimming cancel)."""
    lift = rgb - bg
    return lift / np.maximum(lift.max(-1, keepdims=True), 1.0)


def _colour_tolerance(colours: np.ndarray) -> float:
    """COLOUR_TOL, tightened to under half the smallest gap between class chromas."""
    ref = _chroma(colours.astype(np.float64), np.zeros(3))
    gaps = np.linalg.norm(ref[:, None] - ref[None], axis=-1)
    gaps[np.eye(len(ref), dtype=bool)] = np.inf
    return float(min(COLOUR_TOL, 0.45 * gaps.min())) if len(ref) > 1 else COLOUR_TOL


def _label_balls(bright: np.ndarray, bg: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected bright regions per frame (8-neighbourhood, never across frames)."""
    peak = bright.max(axis=(-2, -1))
    level = bg + BALL_LEVEL * (peak - bg)
    mask = (bright > level[..., None, None]) & visible[..., None, None]
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    return ndimage.label(mask, structure=structure)


def _pick_balls(labels: np.ndarray, count: int, height: int) -> dict[str, np.ndarray]:
    """The largest region of each frame is its ball; also count big regions and stray pixels."""
    p = len(labels)
    frame_of = np.zeros(count + 1, dtype=np.int64)
    frame_of[labels.ravel()] = np.broadcast_to(np.arange(p)[:, None, None], labels.shape).ravel()
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    ids = np.arange(1, count + 1)
    min_area = AREA_RANGE[0] * np.pi * (RADIUS * height) ** 2
    n_big = np.bincount(frame_of[ids[sizes[1:] >= min_area]], minlength=p)
    ranked = ids[np.lexsort((sizes[ids], frame_of[ids]))]  # by frame, then size
    last = np.r_[frame_of[ranked][1:] != frame_of[ranked][:-1], True] if count else ranked > 0
    ball = np.zeros(p, dtype=np.int64)
    ball[frame_of[ranked[last]]] = ranked[last]
    area = np.where(ball > 0, sizes[ball], 0)
    total = np.bincount(frame_of[ids], weights=sizes[ids], minlength=p)
    return {"ball": ball, "n_big": n_big, "area": area, "stray": total - area}


def _frame_stats(video: np.ndarray) -> dict[str, np.ndarray]:
    """Per frame of ``[P, H, W, 3]`` frames: ball blob count, size, fill, centroid row, colour."""
    x = video.astype(np.float32)
    p, h, w, _ = x.shape
    bright = x.max(-1)
    bg = np.median(bright.reshape(p, -1), axis=1)
    bg_rgb = np.median(x.reshape(p, -1, 3), axis=1)
    visible = bright.max(axis=(1, 2)) - bg >= MIN_CONTRAST
    labels, count = _label_balls(bright, bg, visible)
    stats = _pick_balls(labels, count, h)
    ball = stats["ball"][:, None, None]
    in_ball = (labels == ball) & (ball > 0)
    rows = np.broadcast_to(np.arange(h, dtype=np.float32)[None, :, None], labels.shape)
    cols = np.broadcast_to(np.arange(w, dtype=np.float32)[None, None, :], labels.shape)
    box = _extent(rows, in_ball, axis=(1, 2)) * _extent(cols, in_ball, axis=(1, 2))
    weight = np.clip(bright - bg[:, None, None], 0.0, None) * in_ball
    centre_y = (weight * rows).sum(axis=(1, 2)) / np.maximum(weight.sum(axis=(1, 2)), 1e-6)
    colour = (x * in_ball[..., None]).sum(axis=(1, 2)) / np.maximum(stats["area"], 1)[:, None]
    return {**stats, "visible": visible & (stats["ball"] > 0),
            "fill": stats["area"] / np.maximum(box, 1), "centre_y": centre_y,
            "chroma": _chroma(colour, bg_rgb), "bg_rgb": bg_rgb}


def _extent(coord: np.ndarray, mask: np.ndarray, axis: tuple[int, int]) -> np.ndarray:
    """Number of rows (or columns) spanned by ``mask`` in each frame."""
    hi = np.where(mask, coord, -np.inf).max(axis=axis)
    lo = np.where(mask, coord, np.inf).min(axis=axis)
    return np.where(np.isfinite(hi), hi - lo + 1, 0)


def _frame_problem(stats: dict[str, np.ndarray], f: int, height: int) -> str:
    """Why frame ``f`` does not show exactly one plausible ball ('' if it does)."""
    disc = np.pi * (RADIUS * height) ** 2
    lo, hi = AREA_RANGE[0] * disc, AREA_RANGE[1] * disc
    if not stats["visible"][f]:
        return f"frame {f}: no ball visible"
    if stats["n_big"][f] > 1:
        return f"frame {f}: {stats['n_big'][f]} blobs instead of one ball"
    area = stats["area"][f]
    if not lo <= area <= hi:
        return f"frame {f}: blob of {area} px, a ball has {lo:.1f} to {hi:.1f}"
    if stats["fill"][f] < MIN_FILL:
        return f"frame {f}: blob not compact (fill {stats['fill'][f]:.2f} < {MIN_FILL})"
    if stats["stray"][f] > MAX_STRAY * area:
        return f"frame {f}: {stats['stray'][f]:.0f} bright pixels besides the ball"
    return ""


def _contacts(centre_y: np.ndarray, height: int) -> list[int]:
    """Frames where the ball is lowest (local maxima of its row) and at the floor band."""
    floor = floor_row(height) - FLOOR_BAND * height
    drop = MIN_DROP * height
    out = []
    for f, y in enumerate(centre_y):
        before = centre_y[f - 1] if f > 0 else -np.inf
        after = centre_y[f + 1] if f + 1 < len(centre_y) else -np.inf
        if y >= floor and y - before >= drop and y - after >= drop:
            out.append(f)
    return out


def _read_video(stats: dict[str, np.ndarray], frames: slice, colours: np.ndarray,
                height: int, tol: float) -> VideoReading:
    """Turn one clip's frame statistics into a reading."""
    clip = {key: val[frames] for key, val in stats.items()}
    for f in range(len(clip["area"])):
        problem = _frame_problem(clip, f, height)
        if problem:
            return VideoReading(False, reason=problem)
    ref = _chroma(colours[None].astype(np.float64), clip["bg_rgb"][:, None])  # [F, K, 3]
    dist = np.linalg.norm(clip["chroma"][:, None] - ref, axis=-1)
    per_frame = dist.argmin(-1)
    if np.any(dist.min(-1) > tol):
        f = int(dist.min(-1).argmax())
        return VideoReading(False, reason=f"frame {f}: colour {dist[f].min():.2f} from every "
                                          f"class colour (tolerance {tol:.2f})")
    if np.any(per_frame != per_frame[0]):
        return VideoReading(False, reason=f"colour class changes across frames: "
                                          f"{per_frame.tolist()}")
    contacts = _contacts(clip["centre_y"], height)
    if not contacts:
        return VideoReading(False, cls=-1, reason="no floor contact")
    return VideoReading(True, cls=int(per_frame[0]), contact_frames=contacts)


def decode_videos(videos: np.ndarray, colours: np.ndarray) -> list[VideoReading]:
    """Read every clip of uint8 ``[N, F, H, W, 3]`` against class colours uint8 ``[K, 3]``."""
    videos = _as_numpy(videos)
    colours = _as_numpy(colours)
    if videos.ndim != 5 or videos.shape[-1] != 3 or videos.dtype != np.uint8:
        raise ValueError(f"videos must be uint8 [N, F, H, W, 3], got {videos.dtype} "
                         f"{tuple(videos.shape)}")
    if colours.ndim != 2 or colours.shape[-1] != 3 or len(colours) < 1:
        raise ValueError(f"colours must be [K, 3], got {tuple(colours.shape)}")
    n, f, h, w = videos.shape[:4]
    if min(f, h, w) < 1:
        raise ValueError(f"videos need at least one frame of at least 1×1 pixels, got "
                         f"{tuple(videos.shape)}")
    tol = _colour_tolerance(colours)
    readings = []
    for start in range(0, n, CHUNK):  # bounded memory for large sample sets
        stats = _frame_stats(rearrange(videos[start:start + CHUNK], "n f h w c -> (n f) h w c"))
        readings += [_read_video(stats, slice(i * f, (i + 1) * f), colours, h, tol)
                     for i in range(len(videos[start:start + CHUNK]))]
    return readings


def decode_video(video: np.ndarray, colours: np.ndarray) -> VideoReading:
    """Read one clip, uint8 ``[F, H, W, 3]``: its colour class and floor-contact frames."""
    video = _as_numpy(video)
    if video.ndim != 4:
        raise ValueError(f"video must be uint8 [F, H, W, 3], got {tuple(video.shape)}")
    return decode_videos(video[None], colours)[0]


# --------------------------------------------------------------------------- audio
def _envelope_db(power: np.ndarray) -> np.ndarray:
    """Total power per mel frame, dB: ``[N, T, M] → [N, T]``."""
    return 10.0 * np.log10(np.maximum(power.sum(-1), 1e-30))


def _onset_candidates(env: np.ndarray, span: int) -> np.ndarray:
    """Mel frames where the envelope jumps up sharply to a clear peak: bool ``[N, T]``."""
    floor = np.percentile(env, FLOOR_PERCENTILE, axis=1)[:, None]
    prev = np.concatenate([floor, env[:, :-1]], axis=1)  # a tone at frame 0 rises from the floor
    padded = np.pad(env, ((0, 0), (0, span)), constant_values=-np.inf)
    peak = np.stack([padded[:, k:k + env.shape[1]] for k in range(span + 1)]).max(0)
    return ((env - prev >= RISE_DB) & (peak >= floor + MIN_SNR_DB)
            & (peak >= env.max(1, keepdims=True) - PEAK_RANGE_DB))


def _pitch(spectrum: np.ndarray, log_hz: np.ndarray) -> tuple[float, float]:
    """Dominant band of a power spectrum ``[M]``: (log2 Hz, tonality).

    The frequency is the power-weighted mean log-frequency of the strongest bin and its
    neighbours (a tone lands between two overlapping mel filters); tonality is their share of
    the total power.
    """
    b = int(spectrum.argmax())
    near = slice(max(b - 1, 0), b + 2)
    p = spectrum[near]
    log_f = (p * log_hz[near]).sum() / max(p.sum(), 1e-30)
    return float(log_f), float(p.sum() / max(spectrum.sum(), 1e-30))


def _pitch_tolerance(log_pitches: np.ndarray) -> float:
    """PITCH_TOL_OCT, tightened to under half the smallest gap between class pitches."""
    gaps = np.diff(np.sort(log_pitches))
    return float(min(PITCH_TOL_OCT, 0.45 * gaps.min())) if len(gaps) else PITCH_TOL_OCT


def _classify_pitch(log_f: float, log_pitches: np.ndarray) -> tuple[int, float]:
    dist = np.abs(log_pitches - log_f)
    return int(dist.argmin()), float(dist.min())


def _read_audio(power: np.ndarray, onsets: np.ndarray, log_hz: np.ndarray,
                log_pitches: np.ndarray, to_video: float, num_video_frames: int,
                gap: int) -> AudioReading:
    """Turn one clip's mel power ``[T, M]`` and onset candidates ``[T]`` into a reading."""
    kept: list[int] = []
    for j in np.flatnonzero(onsets):
        if not kept or j - kept[-1] >= gap:  # a rise spread over adjacent frames is one onset
            kept.append(int(j))
    frames = [int(np.floor(j * to_video + 0.5)) for j in kept]
    pairs = [(j, f) for j, f in zip(kept, frames) if f < num_video_frames]
    if not pairs:
        return AudioReading(False, reason="no tone onset clearly above the floor")
    spectra = [power[j:j + PITCH_FRAMES].sum(0) for j, _ in pairs]
    log_f, tonality = _pitch(np.sum(spectra, axis=0), log_hz)
    if tonality < MIN_TONALITY:
        return AudioReading(False, reason=f"not tonal at the onsets (dominant band holds "
                                          f"{tonality:.2f} of the power < {MIN_TONALITY})")
    tol = _pitch_tolerance(log_pitches)
    cls, dist = _classify_pitch(log_f, log_pitches)
    if dist > tol:
        return AudioReading(False, reason=f"pitch {2 ** log_f:.0f} Hz is {dist:.2f} octave from "
                                          f"every class pitch (tolerance {tol:.2f})")
    each = [_classify_pitch(_pitch(s, log_hz)[0], log_pitches)[0] for s in spectra]
    if any(c != cls for c in each):
        return AudioReading(False, reason=f"onsets have different pitch classes: {each}")
    onset_frames = sorted(set(f for _, f in pairs))
    return AudioReading(True, cls=cls, onset_frames=onset_frames)


def decode_audios(mel_db: np.ndarray, mel_hz: np.ndarray, pitches: np.ndarray, *,
                  mel_frame_rate: float, fps: float, num_video_frames: int) -> list[AudioReading]:
    """Read every clip of dB mel ``[N, T, M]`` (bin centres ``mel_hz`` [M], class ``pitches`` [K]).

    Mel frame j is centred at time j / mel_frame_rate (the encoder pads by half a window), so
    an onset at mel frame j is video frame round(j·fps / mel_frame_rate); onsets past the last
    video frame are dropped.
    """
    mel_db = _as_numpy(mel_db).astype(np.float64)
    mel_hz = _as_numpy(mel_hz).astype(np.float64)
    pitches = _as_numpy(pitches).astype(np.float64)
    if mel_db.ndim != 3 or mel_db.shape[-1] != len(mel_hz):
        raise ValueError(f"mel_db must be [N, T, M] with M = len(mel_hz) = {len(mel_hz)}, got "
                         f"{tuple(mel_db.shape)}")
    if pitches.ndim != 1 or len(pitches) < 1 or np.any(pitches <= 0):
        raise ValueError(f"pitches must be positive Hz [K], got {pitches}")
    if mel_frame_rate <= 0 or fps <= 0 or num_video_frames < 1:
        raise ValueError(f"need mel_frame_rate > 0, fps > 0 and num_video_frames >= 1; got "
                         f"{mel_frame_rate}, {fps}, {num_video_frames}")
    if mel_db.shape[1] < 1 or mel_db.shape[2] < 1:
        raise ValueError(f"mel_db needs at least one frame and one bin, got {tuple(mel_db.shape)}")
    if len(mel_db) == 0:
        return []
    finite = np.isfinite(mel_db).all(axis=(1, 2))
    power = 10.0 ** (np.where(np.isfinite(mel_db), np.clip(mel_db, -300.0, 300.0), -300.0) / 10.0)
    per_frame = mel_frame_rate / fps  # mel frames per video frame
    span = max(1, int(round(per_frame / 2)))
    onsets = _onset_candidates(_envelope_db(power), span)
    log_hz = np.log2(np.maximum(mel_hz, 1.0))
    log_pitches = np.log2(pitches)
    readings = []
    for i in range(len(mel_db)):
        if not finite[i]:
            readings.append(AudioReading(False, reason="non-finite values in the mel"))
            continue
        readings.append(_read_audio(power[i], onsets[i], log_hz, log_pitches, 1.0 / per_frame,
                                    num_video_frames, span))
    return readings


def decode_audio(mel_db: np.ndarray, mel_hz: np.ndarray, pitches: np.ndarray, *,
                 mel_frame_rate: float, fps: float, num_video_frames: int) -> AudioReading:
    """Read one clip's dB mel ``[T, M]``: its pitch class and tone onsets as video frames."""
    mel_db = _as_numpy(mel_db)
    if mel_db.ndim != 2:
        raise ValueError(f"mel_db must be [T, M], got {tuple(mel_db.shape)}")
    return decode_audios(mel_db[None], mel_hz, pitches, mel_frame_rate=mel_frame_rate, fps=fps,
                         num_video_frames=num_video_frames)[0]


def _as_numpy(x) -> np.ndarray:
    """numpy view of an array or a (CPU-movable) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
