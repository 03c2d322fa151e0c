"""Stage `evaluate`: alignment and fidelity metrics of real, shuffled, baseline and guided pairs.

Sections of `metrics/eval.json`: `real` (the clips themselves, the ceiling), `shuffled` (real
audio paired with another clip's video, the chance level), `baseline` (independent sampling)
and `guided` (discriminator-guided joint sampling, same initial noise as the baseline); what
each holds is `mmdisco.eval.evaluation`'s. `metrics/headline.json` is what `dvc exp show`
lists per experiment, `plots/sweep.csv` the row `dvc plots diff` draws against the guidance
scale. The MLflow run of this stage carries every param, every metric, the sample media and
the ids of the training runs used, so experiments compare side by side in the UI.
"""
from __future__ import annotations

from pathlib import Path

import click

from mmdisco import tracking
from mmdisco.config import to_dict
from mmdisco.eval.evaluation import SETS, evaluate
from mmdisco.eval.summary import headline, summary_line, write_sweep_row
from mmdisco.io import read_json, write_json
from mmdisco.seeds import stage_seed
from stages.common import Timer, load, params_option, user_errors


def log_samples(samples_dir: Path) -> None:
    """Each sampled set's provenance (the training runs used, as tags), sheet and media."""
    for name in SETS:
        folder = samples_dir / name
        if (folder / "provenance.json").is_file():
            tracking.set_tags({f"mmdisco.run.{k}": v
                               for k, v in read_json(folder / "provenance.json").items()})
        if (folder / "sheet.png").is_file():
            tracking.log_artifact(folder / "sheet.png", artifact_path=name)
        if (folder / "media").is_dir():
            tracking.log_artifacts(folder / "media", artifact_path=f"{name}/media")


@click.command("evaluate")
@params_option
@click.option("--clips", "clips_dir", type=click.Path(file_okay=False, path_type=Path),
              default="data/clips", show_default=True)
@click.option("--latents", "latents_dir", type=click.Path(file_okay=False, path_type=Path),
              default="data/latents", show_default=True)
@click.option("--samples", "samples_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="output of `sample` (adds the baseline and guided sections)")
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path),
              default="metrics/eval.json", show_default=True)
@click.option("--headline", "headline_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="the headline metrics of the baseline and guided sets")
@click.option("--sweep-plot", "sweep_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="CSV row of guidance params and guided/baseline metrics, for "
                                 "`dvc plots diff` across experiments")
@user_errors
def main(params_path: Path, clips_dir: Path, latents_dir: Path, samples_dir: Path | None,
         metrics_path: Path, headline_path: Path | None, sweep_path: Path | None) -> None:
    """Score real, shuffled, baseline and guided pairs (eval.*): AV-Align and network Fréchet
    distances on any data; the ground-truth metrics on the embedded world."""
    params = load(params_path)
    timer = Timer()
    report = evaluate(params, clips_dir=clips_dir, latents_dir=latents_dir,
                      samples_dir=samples_dir, seed=stage_seed(params.seed, "evaluate"))
    write_json(metrics_path, report)
    if headline_path is not None and samples_dir is not None:
        write_json(headline_path, headline(report))
    if sweep_path is not None and samples_dir is not None:
        write_sweep_row(sweep_path, params.guidance, report)
    click.echo(f"evaluate: {len(report)} sets in {timer.seconds} s -> {metrics_path}")
    for section, m in report.items():
        click.echo(f"  {section:9s} {summary_line(m)}")
    # one MLflow run that carries everything needed to compare experiments
    with tracking.stage_run("evaluate", to_dict(params)):
        for section, m in report.items():
            tracking.log_metrics(m, prefix=f"{section}.")
        tracking.log_artifact(metrics_path)
        if samples_dir is not None:
            log_samples(samples_dir)
