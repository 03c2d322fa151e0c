"""The `mmdisco` command: one subcommand per pipeline stage (what `dvc.yaml` runs)."""
from __future__ import annotations

import click

from mmdisco.eval import av_align, report
from stages import (acquire, encode, evaluate, extract_clips, sample, sample_fakes, train_base,
                    train_critic, train_discriminator)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
        import torch

        torch.set_num_threads(threads)


for _module in (acquire, extract_clips, encode, train_base, sample_fakes, train_discriminator,
                train_critic, sample, evaluate):
    main.add_command(_module.main)
main.add_command(av_align.main)
main.add_command(report.main)

if __name__ == "__main__":
    main()
