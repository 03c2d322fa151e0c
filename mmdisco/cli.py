"""The `mmdisco` command: one subcommand per pipeline stage (what `dvc.yaml` runs), and the
tools around it (`av-align`, `report`, `download`, `preset`, `generate`)."""
from __future__ import annotations

import importlib

import click

# subcommand -> module whose ``main`` it is. Imported only when that subcommand runs (or for
# --help): a stage pays for its own imports, not for torch, diffusers and mlflow of all others.
COMMANDS = {
    "acquire": "stages.acquire", "extract-clips": "stages.extract_clips",
    "encode": "stages.encode", "train-base": "stages.train_base",
    "sample-fakes": "stages.sample_fakes", "train-discriminator": "stages.train_discriminator",
    "train-critic": "stages.train_critic", "sample": "stages.sample",
    "evaluate": "stages.evaluate", "av-align": "mmdisco.eval.av_align",
    "report": "mmdisco.eval.report", "download": "mmdisco.data.download",
    "preset": "mmdisco.preset", "generate": "mmdisco.generate",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        command = importlib.import_module(COMMANDS[name]).main
        if command.name != name:
            raise RuntimeError(f"{COMMANDS[name]}.main is the command {command.name!r}, "
                               f"not {name!r}: fix mmdisco.cli.COMMANDS")
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mmdisco")
@click.option("--threads", type=click.IntRange(min=1), envvar="MMDISCO_THREADS", default=None,
              help="torch CPU threads [env MMDISCO_THREADS; default: torch's own choice]. "
                   "Use 1 when other processes share the cores: spinning threads then slow "
                   "small models down several times.")
def main(threads: int | None) -> None:
    """Discriminator-guided cooperative diffusion for joint audio-video generation.

    Each subcommand is one DVC stage; `dvc repro` runs them in order with the options of
    dvc.yaml. Run one by hand with `mmdisco STAGE --help` to see its inputs and outputs.
    """
    if threads is not None:
        import torch  # here, so that `mmdisco --help` does not wait for torch

        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
