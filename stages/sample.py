"""Stages `sample` and `sample_baseline`: guided joint samples, and the independent baseline.

One command, two sets (``--set guided|baseline``), each its own DVC stage so that an
experiment on ``guidance.*`` reruns only the guided set. Both sets draw the same noise
(per-item seeds: pair ``i`` has its own generators, the same in both sets), so each guided
pair has a baseline twin that differs only by the guidance. Writes latents, mp4 files with
sound, a contact sheet and the cost of base vs guidance passes.
Launched with several processes (`docs/scaling.md`) each samples its share of the batches; the
main process gathers them in item order and writes the same files as one process would.

With `condition: caption` every pair has a prompt: `sample.prompts` cycled over the pairs, or
by default the captions of the clips that `train_discriminator` holds out
(`discriminator.heldout`).
Each base gets its prompt's embeddings (stored by `encode`) with its own CFG weight; the guided
set's discriminator sees the prompt too and its residuals are combined per modality as
`r_u + w_m (r_c − r_u)` (`CFGGuide`). The baseline uses the same prompts from the same noise.
Media are named by the prompt's index (`<set>_p<prompt>_<pair>.mp4`); `prompts.json` and the
MLflow run hold the texts.

With `guidance.module: released` the discriminator folder holds the authors' module that
`train_discriminator` recorded; it is checked against the bases' latents and prompt embeddings
before sampling and guides with the prompts bound (`mmdisco.guidance.sample_set`).
"""
from __future__ import annotations

from pathlib import Path

import click

from mmdisco import distributed as dist
from mmdisco import tracking
from mmdisco.config import Params, to_dict
from mmdisco.guidance.release import ReleasedDiscriminator, check_bases
from mmdisco.guidance.sampler import Guide, SamplerSettings, StepTimer
from mmdisco.guidance.sample_set import SetPrompts, sample_prompts, sharded_joint, write_set
from mmdisco.guidance.store import load_guide
from mmdisco.io import atomic_path, read_json, write_json
from mmdisco.seeds import stage_seed
from stages.bases import load_bases
from stages.common import load, params_option, user_errors


def _check_module(params: Params, module, folder: Path, bases: tuple) -> None:
    """Refuse a guide folder that holds another module than ``guidance.module`` says, or a
    released module that does not fit the bases (``bases``: audio, video, prompt table)."""
    released = isinstance(module, ReleasedDiscriminator)
    if released != (params.guidance.module == "released"):
        raise click.ClickException(
            f"{folder} holds {'a released' if released else 'a trained'} discriminator but "
            f"guidance.module is {params.guidance.module}: rerun train_discriminator (dvc repro)")
    if released:
        base_a, base_v, table = bases
        texts = (None, None) if table is None else \
            (table.null("audio").shape[1:], table.null("video").shape[1:])
        for note in check_bases(module, base_a, base_v, *texts):
            click.echo(f"note: {note}", err=True)


def _guides(params: Params, guided: bool, discriminator: Path, critic: Path,
            folders: dict[str, Path], bases: tuple) -> tuple[Guide, Guide]:
    """The discriminator's and the critic's guides, adding the folders loaded to ``folders``.
    The baseline has both off and reads nothing of guidance.* (its stage does not depend on it)."""
    if not guided:
        return Guide(None, 0.0, 0.0), Guide(None, 0.0, 0.0)
    g, device = params.guidance, dist.device(params.device)
    folders["discriminator"] = discriminator
    module = load_guide(discriminator)
    _check_module(params, module, discriminator, bases)
    D = Guide(dist.to_device(module, device), *g.scales)
    if not any(g.critic_scales):
        return D, Guide(None, *g.critic_scales)
    folders["critic"] = critic
    return D, Guide(dist.to_device(load_guide(critic), device), *g.critic_scales)


def _prompts(params: Params, table) -> SetPrompts | None:
    """With ``condition: caption``, every pair's prompt: ``sample.prompts`` cycled, or by default
    the captions of the clips that `train_discriminator` holds out (its split seed)."""
    if table is None:
        return None
    texts, prompt_of = sample_prompts(table, params.sample.prompts, params.sample.num_samples,
                                      params.discriminator.heldout,
                                      stage_seed(params.seed, "train_discriminator"))
    return SetPrompts.from_table(table, texts, prompt_of, (params.cfg.audio, params.cfg.video))


def _run_ids(folders: dict[str, Path]) -> dict[str, str | None]:
    """MLflow run id of the stage that trained each model folder (None if not recorded)."""
    return {name: (read_json(f / "training.json").get("mlflow_run_id")
                   if (f / "training.json").is_file() else None) for name, f in folders.items()}


@click.command("sample")
@params_option
@click.option("--set", "which", type=click.Choice(["guided", "baseline"]), default="guided",
              show_default=True, help="baseline: the bases sampled independently (guidance off; "
                                      "a change of guidance.* does not rerun it)")
@click.option("--latents", "latents_dir", type=click.Path(file_okay=False, path_type=Path),
              default="data/latents", show_default=True, help="for the encoders' normalisation")
@click.option("--audio-base", type=click.Path(file_okay=False, path_type=Path),
              default="models/base_audio", show_default=True)
@click.option("--video-base", type=click.Path(file_okay=False, path_type=Path),
              default="models/base_video", show_default=True)
@click.option("--discriminator", type=click.Path(file_okay=False, path_type=Path),
              default="models/discriminator", show_default=True, help="guided only")
@click.option("--critic", type=click.Path(file_okay=False, path_type=Path),
              default="models/critic", show_default=True,
              help="contrastive critic; loaded only when guided and guidance.critic_weight > 0")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="[default: data/samples/<set>]")
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="[default: metrics/sample.json, metrics/sample_baseline.json]")
@user_errors
def main(params_path: Path, which: str, latents_dir: Path, audio_base: Path, video_base: Path,
         discriminator: Path, critic: Path, out: Path | None, metrics_path: Path | None) -> None:
    """Sample guided pairs, or the independent baseline from the same noise (guidance.*,
    sample.*)."""
    params = load(params_path)
    cfg, guided = params.sample, which == "guided"
    out = out or Path("data/samples") / which
    metrics_path = metrics_path or Path("metrics/sample.json" if guided else
                                        "metrics/sample_baseline.json")
    base_a, base_v, table = load_bases(params, audio_base, video_base, latents_dir)
    folders = {"audio_base": audio_base, "video_base": video_base}
    d, c = _guides(params, guided, discriminator, critic, folders, (base_a, base_v, table))
    enc, prompts, timer = read_json(latents_dir / "encoders.json"), _prompts(params, table), StepTimer()
    restarts = (params.guidance.restarts, params.guidance.restart_steps) if guided else (0, 0)
    settings = SamplerSettings(cfg.steps, cfg.kind, cfg.eta, *restarts)
    # one seed for both sets: pair i of the baseline and of the guided set start from the
    # same noise, so each guided pair has a baseline twin
    a, v = sharded_joint(base_a, base_v, settings, guides=[d, c], num_samples=cfg.num_samples,
                         batch_size=cfg.batch_size, seed=stage_seed(params.seed, "sample"),
                         prompts=prompts, device=dist.device(params.device), timer=timer)
    if not dist.is_main():   # the main process writes everything
        dist.barrier()
        return
    report = {"scale_audio": d.scale_a, "scale_video": d.scale_v, "critic_scale_audio": c.scale_a,
              "critic_scale_video": c.scale_v, **timer.per_pass_cost()}
    with atomic_path(out) as tmp:
        write_set(tmp, a, v, encoders=enc, media=cfg.media, name=which, prompts=prompts,
                  cfg=to_dict(params.cfg))
        write_json(tmp / "provenance.json", _run_ids(folders))
    write_json(metrics_path, report)
    click.echo(f"sample: {cfg.num_samples} {which} pairs (s_a={d.scale_a}, s_v={d.scale_v}) in "
               f"{report['total_s']:.1f} s -> {out}")
    logged = {"seed": params.seed, "sample": to_dict(cfg), "set": which,
              "condition": params.condition, "cfg": to_dict(params.cfg),
              **({"guidance": to_dict(params.guidance)} if guided else {})}
    with tracking.stage_run("sample" if guided else "sample_baseline", logged):
        tracking.log_metrics(report)
        if prompts is not None:
            tracking.log_dict({"prompts": prompts.texts, "prompt_of": prompts.prompt_of},
                              "prompts.json")
        tracking.log_metrics({"processes": dist.world_size()})
    dist.barrier()
