"""What the pipeline tests share: the stage names, a small world, which stages ran."""
from __future__ import annotations

import re

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
    "discriminator.steps": 4, "discriminator.batch_size": 8, "discriminator.heldout": 8, "discriminator.eval_every": 4,
    "discriminator.log_every": 2, "discriminator.checkpoint_every": 2,
    "critic.steps": 4, "critic.batch_size": 8, "critic.heldout": 8, "critic.eval_every": 4,
    "critic.log_every": 2, "critic.checkpoint_every": 2,
    "sample.num_samples": 6, "sample.steps": 3, "sample.media": 2,
}


def ran(stdout: str) -> set[str]:
    return {s for s in STAGES if f"Running stage '{s}'" in stdout}


def fraction_of(x: float, n: int) -> int:
    """``k`` where the metric ``x`` is ``k / n``: a mean of ``n`` zero-one outcomes (float32 sum
    exact, one rounded division: ``|x·n − k| ≤ n·2⁻²⁴``). Fails if ``x`` is no such fraction."""
    k = round(x * n)
    assert 0 <= k <= n and abs(x * n - k) <= n * 2.0 ** -23, (x, n)
    return k


# fields of a stage's JSON that measure time or name an MLflow run
VOLATILE = {"seconds", "pairs_per_second", "mlflow_run_id", "guided_step_cost_ratio",
            "sampling_time_ratio"}
RUN_ID = re.compile(r"[0-9a-f]{32}")   # data/samples/provenance.json maps guides to runs


def normalise(obj, volatile: frozenset[str] | set[str] = frozenset(VOLATILE)):
    """JSON without timing fields (``*_s`` and ``volatile``), MLflow run ids masked; lists keep
    their order. What two runs of a deterministic stage must agree on."""
    if isinstance(obj, dict):
        return {k: normalise(v, volatile) for k, v in obj.items()
                if k not in volatile and not k.endswith("_s")}
    if isinstance(obj, list):
        return [normalise(v, volatile) for v in obj]
    if isinstance(obj, str) and RUN_ID.fullmatch(obj):
        return "<mlflow run id>"
    return obj
