"""What the pipeline tests share: the stage names, a small world, which stages ran."""
from __future__ import annotations

STAGES = ("acquire", "extract_clips", "encode", "train_base_audio", "train_base_video",
          "sample_fakes", "train_discriminator", "train_critic", "sample_baseline", "sample",
          "evaluate")

SMALL = {
    "data.synth.num_files": 24,
    "data.synth.seconds": 2.0,
    "eval.bootstrap": 50,
    "base.audio.steps": 6, "base.audio.warmup_steps": 1, "base.audio.batch_size": 8,
    "base.video.steps": 6, "base.video.warmup_steps": 1, "base.video.batch_size": 8,
    "fakes.num_pairs": 16, "fakes.steps": 3,
    "train.steps": 4, "train.batch_size": 8, "train.heldout": 8, "train.eval_every": 4,
    "train.log_every": 2, "train.checkpoint_every": 2,
    "critic.steps": 4, "critic.batch_size": 8, "critic.heldout": 8, "critic.eval_every": 4,
    "critic.log_every": 2, "critic.checkpoint_every": 2,
    "sample.num_samples": 6, "sample.steps": 3, "sample.media": 2,
}


def ran(stdout: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in stdout}
