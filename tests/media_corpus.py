"""A corpus of broken and unusual media files, made by code, each with its expected outcome.

``build_corpus(folder)`` writes every file into ``folder`` and returns ``{name: Entry}``. Files
are made with PyAV, and two more with the ffmpeg command line when it is installed (entries
with ``made_by="ffmpeg"`` are simply absent otherwise). Every usable file shows one event: a
bright flash of the whole picture that starts on a source frame at ``Entry.event_s`` and lasts
0.25 s, and a 20 ms tone burst ("click") that starts at the same instant, so audio-video sync
can be checked after extraction. ``CFG`` is the clip config the expectations are written for.

Import this module (or ``av``) before ``decord`` in a process: the other order leaves PyAV
unable to open its VP8/VP9 encoders.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mmdisco.config import ClipConfig

CFG = ClipConfig(seconds=1.0, hop_seconds=1.0, fps=8, size=16, sample_rate=16000, workers=2,
                 file_timeout_s=60.0, max_reject_fraction=1.0, shard_size=1024)
SECONDS = 3.2          # length of the ordinary usable files: three 1 s windows
EVENT_S = 1.5          # nominal flash and click time (video time)
FLASH_S = 0.25         # how long the flash stays on (longer than one output frame)
DARK, BRIGHT = 20, 235
LONG_SECONDS = 600     # the long file: 10 minutes


@dataclass(frozen=True)
class Entry:
    """One corpus file and what extraction must do with it."""

    name: str
    what: str                      # what is unusual about the file
    reason: str | None = None      # rejected: the REJECT_REASONS key
    detail: str | None = None      # rejected: a substring of the reject detail
    windows: int | None = None     # used: clips cut from it
    fps: float | None = None       # used: source frame rate (average for VFR)
    sample_rate: int | None = None  # used: source audio rate
    channels: int | None = None    # used: source audio channels
    event_s: float | None = None   # used: when the flash starts (None: no flash)
    click_s: float | None = None   # used: when the click starts (None: at event_s)
    silent: bool = False           # used: the audio track is digital silence
    audio_delay_s: float = 0.0     # used: encoder delay the container cannot signal
    rotation: int = 0              # used: display rotation (degrees, counter-clockwise)
    made_by: str = "pyav"          # "pyav" or "ffmpeg"
    regular: bool = True           # False: not a regular file (acquire does not list it)

    @property
    def click_at(self) -> float | None:
        """When the click starts in video time (None: no click)."""
        return None if self.silent else (self.click_s if self.click_s is not None
                                         else self.event_s)

    @property
    def used(self) -> bool:
        return self.reason is None

    @property
    def in_stage(self) -> bool:
        """True when `acquire` (data.source: folder) lists the file: every regular file, with
        no suffix filter (a named pipe it skips unopened; a folder it searches)."""
        return self.regular


# --------------------------------------------------------------------------- content
def flash_video(times: np.ndarray, event_s: float | None, h: int = 32, w: int = 32,
                marker: bool = False) -> np.ndarray:
    """Dark frames; frames starting in [event_s, event_s + FLASH_S) are bright.

    ``marker`` paints the top 6 rows red, to tell which way up a rotated picture comes out.
    """
    video = np.full((len(times), h, w, 3), DARK, np.uint8)
    if event_s is not None:
        on = (times >= event_s - 1e-9) & (times < event_s + FLASH_S - 1e-9)
        video[on] = BRIGHT
    if marker:
        video[:, :6] = (255, 0, 0)
    return video


def click_audio(seconds: float, sr: int, event_s: float | None, channels: int = 1,
                click_channels: list[int] | None = None, silent: bool = False) -> np.ndarray:
    """[C, L] float32: quiet noise (or silence) with a 20 ms 440 Hz burst at ``event_s``."""
    n = round(seconds * sr)
    if silent:
        return np.zeros((channels, n), np.float32)
    rng = np.random.default_rng(sr + channels)
    audio = (0.001 * rng.standard_normal((channels, n))).astype(np.float32)
    if event_s is not None:
        s, m = round(event_s * sr), round(0.02 * sr)
        burst = 0.8 * np.sin(2 * np.pi * 440 * np.arange(m) / sr).astype(np.float32)
        for c in (range(channels) if click_channels is None else click_channels):
            audio[c, s:s + m] += burst[:max(0, n - s)]
    return audio


def grid_times(seconds: float, fps: float) -> np.ndarray:
    return np.arange(round(seconds * fps)) / fps


def grid_event(fps: float, event_s: float = EVENT_S) -> float:
    """The first source frame start at or after ``event_s``."""
    return float(np.ceil(event_s * fps - 1e-9) / fps)


# --------------------------------------------------------------------------- writer
def write_media(path: Path, *, video: np.ndarray | None = None, fps: float = 8,
                pts: list[int] | None = None, time_base: Fraction | None = None,
                audio: np.ndarray | None = None, sr: int = 16000, layout: str = "mono",
                vcodec: str = "libx264", acodec: str = "aac", pix_fmt: str = "yuv420p",
                fmt: str | None = None, vopts: dict | None = None, aopts: dict | None = None,
                container_opts: dict | None = None, rotation: int | None = None,
                attached_pic: np.ndarray | None = None,
                audio_jump: tuple[float, float] | None = None) -> None:
    """Write video uint8 [F, H, W, 3] (pts in ``time_base``, default frame index / fps) and
    audio float32 [C, L] (pts in samples) with any codecs PyAV offers. ``audio_jump=(at, by)``
    moves the audio timestamps from ``at`` seconds on ``by`` seconds later."""
    with av.open(str(path), "w", format=fmt, options=container_opts or {}) as out:
        vs = ast = pic = None
        if video is not None:
            vs = out.add_stream(vcodec, rate=Fraction(fps).limit_denominator(1000))
            vs.height, vs.width = video.shape[1:3]
            vs.pix_fmt = pix_fmt
            vs.codec_context.thread_count = 1
            vs.options = dict(vopts or {})
            if time_base is not None:
                vs.codec_context.time_base = time_base
            if rotation is not None:
                vs.set_display_rotation(rotation)
        if audio is not None:
            ast = out.add_stream(acodec, rate=sr)
            ast.layout = layout
            ast.options = dict(aopts or {})
        if attached_pic is not None:
            pic = out.add_stream("mjpeg")
            pic.height, pic.width = attached_pic.shape[:2]
            pic.pix_fmt = "yuvj420p"
            pic.disposition = av.stream.Disposition.attached_pic
        if vs is not None:
            tb = time_base or Fraction(1, 1) / vs.codec_context.framerate
            for i, image in enumerate(video):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                frame.pts, frame.time_base = (i if pts is None else pts[i]), tb
                out.mux(vs.encode(frame))
            out.mux(vs.encode(None))
        if pic is not None:
            frame = av.VideoFrame.from_ndarray(attached_pic, format="rgb24")
            frame.pts = 0
            out.mux(pic.encode(frame))
            out.mux(pic.encode(None))
        if ast is not None:
            step = 4096
            for s in range(0, audio.shape[1], step):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, s:s + step]),
                                                   format="fltp", layout=layout)
                jump = (round(audio_jump[1] * sr) if audio_jump and s >= audio_jump[0] * sr
                        else 0)
                frame.sample_rate, frame.pts, frame.time_base = sr, s + jump, Fraction(1, sr)
                out.mux(ast.encode(frame))
            out.mux(ast.encode(None))


def _usable(path: Path, *, fps: float = 24, sr: int = 44100, layout: str = "mono",
            seconds: float = SECONDS, h: int = 32, w: int = 32, silent: bool = False,
            click_channels: list[int] | None = None, marker: bool = False, **kw) -> float:
    """A CFR file with the flash and click at the first source frame at/after EVENT_S."""
    event = grid_event(fps)
    channels = len(av.AudioLayout(layout).channels)
    write_media(path, video=flash_video(grid_times(seconds, fps), event, h, w, marker), fps=fps,
                audio=click_audio(seconds, sr, None if silent else event, channels,
                                  click_channels, silent), sr=sr, layout=layout, **kw)
    return event


def _truncate(src: Path, dst: Path, fraction: float) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[:int(len(data) * fraction)])


def _long_file(path: Path) -> None:
    """10 minutes of 16x16 H.264 at 8 fps and 48 kHz AAC with a click every second (~0.5 MB)."""
    sr, fps, side = 48000, 8, 16
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.height = vs.width = side
        vs.pix_fmt = "yuv420p"
        vs.options = {"preset": "ultrafast"}
        ast = out.add_stream("aac", rate=sr)
        ast.layout = "mono"
        ast.options = {"aac_coder": "fast", "b": "24k"}
        for i in range(LONG_SECONDS * fps):
            value = BRIGHT if i % fps == 4 else DARK      # a flash at k + 0.5 s, every second
            frame = av.VideoFrame.from_ndarray(np.full((side, side, 3), value, np.uint8),
                                               format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        second = np.zeros((1, sr), np.float32)
        m = sr // 50
        second[0, sr // 2:sr // 2 + m] = 0.5 * np.sin(2 * np.pi * 440 * np.arange(m) / sr)
        for s in range(0, sr * LONG_SECONDS, sr):
            frame = av.AudioFrame.from_ndarray(second, format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = sr, s, Fraction(1, sr)
            out.mux(ast.encode(frame))
        out.mux(ast.encode(None))


def _ffmpeg_marker_side(path: Path) -> str:
    """Where ffmpeg (which applies the display rotation) shows the red marker of frame 0."""
    proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-frames:v",
                           "1", "-f", "image2pipe", "-c:v", "ppm", "-"],
                          capture_output=True, timeout=60, check=True)
    magic, size, depth, data = proc.stdout.split(b"\n", 3)
    w, h = map(int, size.split())
    image = np.frombuffer(data[:w * h * 3], np.uint8).reshape(h, w, 3)
    red = (image[..., 0] > 150) & (image[..., 1] < 90)
    sides = {"top": red[:3].mean(), "bottom": red[-3:].mean(), "left": red[:, :3].mean(),
             "right": red[:, -3:].mean()}
    return max(sides, key=sides.get)


def _ffmpeg(*args: str) -> bool:
    """Run the ffmpeg CLI quietly; False when it fails (an option this build lacks)."""
    proc = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode == 0


# --------------------------------------------------------------------------- the corpus
def _entries() -> list[Entry]:
    """Every corpus file with its expected outcome (``build_corpus`` writes them)."""
    mp4 = "mp4 (index at the end) cut at {}% of its bytes"
    fs = "faststart mp4 (index first) cut at {}% of its bytes"
    rejected = [
        Entry("r01_zero_bytes.mp4", "empty file", "zero_bytes", "empty"),
        Entry("r02_random_garbage.mp4", "20 kB of random bytes named .mp4", "not_media",
              "not an audio/video file"),
        Entry("r03_html_error_page.mp4", "a failed download: an HTML page named .mp4",
              "not_media", "not an audio/video file"),
        *[Entry(f"r04_truncated_{p:02d}pct.mp4", mp4.format(p), "truncated", "download")
          for p in (10, 50, 90)],
        *[Entry(f"r05_truncated_faststart_{p:02d}pct.mp4", fs.format(p), "truncated",
                "data ends at") for p in (50, 90)],
        Entry("r06_truncated_50pct.mkv", "Matroska cut at 50% of its bytes", "truncated",
              "data ends at"),
        Entry("r07_video_only.mp4", "H.264 without an audio stream", "no_audio",
              "no audio stream"),
        Entry("r08_audio_only.m4a", "AAC in an mp4 container, no video stream", "no_video",
              "no video stream"),
        Entry("r09_audio_only.wav", "PCM WAV", "no_video", "no video stream"),
        Entry("r10_audio_only.mp3", "MP3", "no_video", "no video stream"),
        Entry("r11_music_with_cover_art.mp4",
              "AAC plus one still cover picture (an attached_pic 'video' stream)", "no_video",
              "cover picture"),
        Entry("r12_empty_audio_stream.mkv", "an audio stream is declared but holds no packets",
              "no_audio", "no samples"),
        Entry("r13_shorter_than_window.mp4", "0.6 s of audio and video; a clip needs 1 s",
              "too_short", "a clip needs 1.0 s"),
        Entry("r14_hang_fifo.mp4", "a named pipe: opening it blocks forever", "timeout",
              "file_timeout_s", regular=False),
        Entry("r15_folder.mp4", "a folder named like a media file", "not_media", "folder",
              regular=False),
    ]
    used = [
        Entry("u01_h264_aac_24fps_44k_stereo.mp4", "baseline: H.264 + AAC, stereo", windows=3,
              fps=24, sample_rate=44100, channels=2, event_s=grid_event(24)),
        Entry("u02_h264_aac_60fps_48k.mp4", "60 fps", windows=3, fps=60, sample_rate=48000,
              channels=1, event_s=grid_event(60)),
        Entry("u03_vp9_opus_30fps_48k_stereo.webm", "WebM: VP9 + Opus (Opus pre-skip)",
              windows=3, fps=30, sample_rate=48000, channels=2, event_s=grid_event(30)),
        Entry("u04_h264_aac_25fps_48k.mkv", "Matroska: H.264 + AAC (codec delay as skip_samples)",
              windows=3, fps=25, sample_rate=48000, channels=1, event_s=grid_event(25)),
        Entry("u05_mjpeg_pcm_30fps_48k.mov", "QuickTime: Motion JPEG + PCM (camera style)",
              windows=3, fps=30, sample_rate=48000, channels=1, event_s=grid_event(30)),
        Entry("u06_mpeg4_mp3_25fps_44k_stereo.avi", "AVI: MPEG-4 part 2 + MP3", windows=3,
              fps=25, sample_rate=44100, channels=2, event_s=grid_event(25),
              audio_delay_s=1105 / 44100),  # LAME's delay: AVI has no edit list to undo it
        Entry("u07_mpeg2_mp2_25fps_48k.ts", "MPEG-TS: MPEG-2 + MP2, timestamps start at 1.4 s",
              windows=3, fps=25, sample_rate=48000, channels=2, event_s=grid_event(25)),
        Entry("u08_hevc_aac_30fps_48k.mp4", "H.265/HEVC", windows=3, fps=30, sample_rate=48000,
              channels=1, event_s=grid_event(30)),
        Entry("u09_av1_opus_24fps_48k.mkv", "AV1 (decord's FFmpeg cannot decode it) + Opus",
              windows=3, fps=24, sample_rate=48000, channels=1, event_s=grid_event(24)),
        Entry("u10_h264_10bit_30fps_44k.mkv", "10-bit H.264", windows=3, fps=30,
              sample_rate=44100, channels=1, event_s=grid_event(30)),
        Entry("u11_fragmented.mp4", "fragmented mp4 (empty moov: no durations in the header)",
              windows=3, fps=25, sample_rate=44100, channels=1, event_s=grid_event(25)),
        Entry("u12_aac_5.1_48k.mp4", "5.1 AAC, the click on the centre channel only",
              windows=3, fps=25, sample_rate=48000, channels=6, event_s=grid_event(25)),
        Entry("u13_silent_audio.mp4", "the audio track is digital silence", windows=3, fps=24,
              sample_rate=44100, channels=1, event_s=grid_event(24), silent=True),
        Entry("u14_audio_shorter_than_video.mp4", "1.2 s of audio under 3.2 s of video",
              windows=1, fps=24, sample_rate=44100, channels=1),
        Entry("u15_variable_frame_rate.mp4",
              "variable frame rate: 15-69 ms steps, 0.3 s and 0.6 s holds", windows=3,
              sample_rate=48000, channels=1, event_s=1.5),
        Entry("u16_odd_17x9.mp4", "odd frame size 17x9 (yuv444p)", windows=3, fps=24,
              sample_rate=44100, channels=1, event_s=grid_event(24)),
        Entry("u17_tiny_2x2.mp4", "a 2x2 picture (upsampled)", windows=3, fps=24,
              sample_rate=44100, channels=1, event_s=grid_event(24)),
        Entry("u18_rotated_90.mp4", "48x32 coded, display matrix: rotate 90 degrees (portrait)",
              windows=3, fps=30, sample_rate=48000, channels=1, event_s=grid_event(30),
              rotation=90),
        Entry("u20_audio_timestamps_jump_1h.mkv",
              "after 1.6 s the audio timestamps jump 1 hour ahead (a damaged muxer)",
              windows=1, fps=24, sample_rate=48000, channels=1, event_s=0.5),
        Entry(LONG_NAME, "10 minutes, 16x16, 48 kHz; a flash and a click every second at "
              "k + 0.5 s", windows=LONG_SECONDS, fps=8, sample_rate=48000, channels=1,
              event_s=0.5),
        Entry("f01_rotated_270_ffmpeg.mp4",
              "ffmpeg -display_rotation 270 (or the rotate=270 tag)", windows=3, fps=30,
              sample_rate=48000, channels=1, event_s=grid_event(30), rotation=270,
              made_by="ffmpeg"),
        Entry("f02_audio_starts_0.5s_late_ffmpeg.mp4",
              "ffmpeg -itsoffset 0.5: the audio stream starts 0.5 s after the video", windows=3,
              fps=30, sample_rate=48000, channels=1, event_s=grid_event(30),
              click_s=grid_event(30) + 0.5, made_by="ffmpeg"),
    ]
    return rejected + used


LONG_NAME = "u19_long_10min_16x16.mp4"
ENTRIES: dict[str, Entry] = {e.name: e for e in _entries()}


def build_corpus(folder: Path, *, ffmpeg: str | None = "auto", long_file: bool = True
                 ) -> dict[str, Entry]:
    """Write the corpus into ``folder``; return {file name: Entry} of the files written.

    ``ffmpeg="auto"`` also makes the ``made_by="ffmpeg"`` files when the ffmpeg CLI is on
    PATH (None: never). ``long_file=False`` leaves out the 10-minute file.
    """
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    ffmpeg = shutil.which("ffmpeg") if ffmpeg == "auto" else ffmpeg
    made: list[str] = []
    turned: dict[str, int] = {}

    def done(name: str) -> None:
        assert name in ENTRIES and (d / name).exists(), name
        made.append(name)

    def usable(name: str, **kw) -> None:
        e = ENTRIES[name]
        assert len(av.AudioLayout(kw.get("layout", "mono")).channels) == e.channels, name
        _usable(d / name, fps=e.fps, sr=e.sample_rate, silent=e.silent, **kw)
        done(name)

    # ---- not media at all
    (d / "r01_zero_bytes.mp4").write_bytes(b"")
    done("r01_zero_bytes.mp4")
    (d / "r02_random_garbage.mp4").write_bytes(np.random.default_rng(2).bytes(20_000))
    done("r02_random_garbage.mp4")
    (d / "r03_html_error_page.mp4").write_text(
        "<!DOCTYPE html><html><head><title>403 Forbidden</title></head>"
        "<body><h1>Forbidden</h1><p>You don't have permission.</p></body></html>\n" * 20)
    done("r03_html_error_page.mp4")

    # ---- truncated copies of valid files
    _usable(d / "base.mp4", fps=24, sr=44100)
    _usable(d / "base_fs.mp4", fps=24, sr=44100, container_opts={"movflags": "faststart"})
    _usable(d / "base.mkv", fps=25, sr=48000)
    for pct in (10, 50, 90):
        _truncate(d / "base.mp4", d / f"r04_truncated_{pct:02d}pct.mp4", pct / 100)
        done(f"r04_truncated_{pct:02d}pct.mp4")
    for pct in (50, 90):
        _truncate(d / "base_fs.mp4", d / f"r05_truncated_faststart_{pct:02d}pct.mp4", pct / 100)
        done(f"r05_truncated_faststart_{pct:02d}pct.mp4")
    _truncate(d / "base.mkv", d / "r06_truncated_50pct.mkv", 0.5)
    done("r06_truncated_50pct.mkv")
    for name in ("base.mp4", "base_fs.mp4", "base.mkv"):
        (d / name).unlink()

    # ---- a stream is missing, empty or too short
    write_media(d / "r07_video_only.mp4", video=flash_video(grid_times(SECONDS, 24), 1.5),
                fps=24)
    done("r07_video_only.mp4")
    audio = click_audio(SECONDS, 44100, 1.5, 2)
    for name, codec in (("r08_audio_only.m4a", "aac"), ("r09_audio_only.wav", "pcm_s16le"),
                        ("r10_audio_only.mp3", "libmp3lame")):
        write_media(d / name, audio=audio, sr=44100, layout="stereo", acodec=codec)
        done(name)
    write_media(d / "r11_music_with_cover_art.mp4", audio=audio, sr=44100, layout="stereo",
                attached_pic=np.full((32, 32, 3), 200, np.uint8))
    done("r11_music_with_cover_art.mp4")
    write_media(d / "r12_empty_audio_stream.mkv", video=flash_video(grid_times(SECONDS, 8), 1.5),
                fps=8, audio=np.zeros((1, 0), np.float32), sr=16000)
    done("r12_empty_audio_stream.mkv")
    _usable(d / "r13_shorter_than_window.mp4", fps=24, sr=44100, seconds=0.6)
    done("r13_shorter_than_window.mp4")
    os.mkfifo(d / "r14_hang_fifo.mp4")
    done("r14_hang_fifo.mp4")
    (d / "r15_folder.mp4").mkdir()
    done("r15_folder.mp4")

    # ---- containers and codecs
    usable("u01_h264_aac_24fps_44k_stereo.mp4", layout="stereo")
    usable("u02_h264_aac_60fps_48k.mp4")
    usable("u03_vp9_opus_30fps_48k_stereo.webm", layout="stereo", vcodec="libvpx-vp9",
           acodec="libopus", vopts={"deadline": "realtime", "cpu-used": "8"})
    usable("u04_h264_aac_25fps_48k.mkv")
    usable("u05_mjpeg_pcm_30fps_48k.mov", vcodec="mjpeg", pix_fmt="yuvj420p",
           acodec="pcm_s16le")
    usable("u06_mpeg4_mp3_25fps_44k_stereo.avi", layout="stereo", vcodec="mpeg4",
           acodec="libmp3lame")
    usable("u07_mpeg2_mp2_25fps_48k.ts", layout="stereo", vcodec="mpeg2video", acodec="mp2")
    usable("u08_hevc_aac_30fps_48k.mp4", vcodec="libx265",
           vopts={"x265-params": "log-level=error"})
    usable("u09_av1_opus_24fps_48k.mkv", h=64, w=64, vcodec="libsvtav1", acodec="libopus",
           vopts={"preset": "12", "svtav1-params": "log-level=0"})
    usable("u10_h264_10bit_30fps_44k.mkv", pix_fmt="yuv420p10le")
    usable("u11_fragmented.mp4", container_opts={"movflags": "frag_keyframe+empty_moov"})

    # ---- audio layouts and content
    usable("u12_aac_5.1_48k.mp4", layout="5.1", click_channels=[2])   # 2 = front centre
    usable("u13_silent_audio.mp4")
    write_media(d / "u14_audio_shorter_than_video.mp4",
                video=flash_video(grid_times(SECONDS, 24), grid_event(24)), fps=24,
                audio=click_audio(1.2, 44100, None), sr=44100)
    done("u14_audio_shorter_than_video.mp4")

    # ---- frame rates, sizes, orientation, length
    rng = np.random.default_rng(14)
    t = np.concatenate([[0], np.cumsum(rng.integers(15, 70, 200))])    # ms
    t = np.unique(np.concatenate([t[t < 1200], [1200, 1500, 1700], t[(t > 2300) & (t < 3200)]]))
    # a 0.3 s hold from 1.2 s, the flash from exactly 1.5 s, a 0.6 s hold from 1.7 s
    write_media(d / "u15_variable_frame_rate.mp4", video=flash_video(t / 1000, 1.5),
                pts=t.tolist(), time_base=Fraction(1, 1000), fps=25,
                audio=click_audio(SECONDS, 48000, 1.5), sr=48000)
    done("u15_variable_frame_rate.mp4")
    usable("u16_odd_17x9.mp4", h=9, w=17, pix_fmt="yuv444p")
    usable("u17_tiny_2x2.mp4", h=2, w=2, pix_fmt="yuv444p")
    usable("u18_rotated_90.mp4", h=32, w=48, marker=True, rotation=90)
    write_media(d / "u20_audio_timestamps_jump_1h.mkv",
                video=flash_video(grid_times(SECONDS, 24), 0.5), fps=24,
                audio=click_audio(SECONDS, 48000, 0.5), sr=48000, audio_jump=(1.6, 3600.0))
    done("u20_audio_timestamps_jump_1h.mkv")
    if long_file:
        _long_file(d / LONG_NAME)
        done(LONG_NAME)

    # ---- made by the ffmpeg command line, when present
    if ffmpeg:
        src = d / "src.mp4"
        _usable(src, fps=30, sr=48000, h=32, w=48, marker=True)
        name = "f01_rotated_270_ffmpeg.mp4"
        if (_ffmpeg("-display_rotation", "270", "-i", str(src), "-c", "copy", str(d / name))
                or _ffmpeg("-i", str(src), "-c", "copy", "-metadata:s:v:0", "rotate=270",
                           str(d / name))):
            done(name)
            # the expected turn is the one ffmpeg itself shows (tag conventions changed over
            # FFmpeg versions): where does the marker (top of the coded picture) land?
            side = _ffmpeg_marker_side(d / name)
            turned[name] = {"left": 90, "bottom": 180, "right": 270}.get(side, 0)
        name = "f02_audio_starts_0.5s_late_ffmpeg.mp4"
        if _ffmpeg("-i", str(src), "-itsoffset", "0.5", "-i", str(src), "-map", "0:v",
                   "-map", "1:a", "-c", "copy", str(d / name)):
            done(name)
        src.unlink()
    return {name: replace(ENTRIES[name], rotation=turned.get(name, ENTRIES[name].rotation))
            for name in made}
