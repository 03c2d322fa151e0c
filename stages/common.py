"""Options and helpers shared by the stage commands."""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Callable

import click

from mmdisco.config import ConfigError, Params, load_params

params_option = click.option(
    "--params", "params_path", type=click.Path(dir_okay=False, path_type=Path),
    default="params.yaml", show_default=True, help="params file (DVC passes the repo's own)")

latents_option = click.option(
    "--latents", "latents_dir", type=click.Path(file_okay=False, path_type=Path),
    default="data/latents", show_default=True)


def bases_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--audio-base`` and ``--video-base``: the folders of the two trained bases."""
    for modality in ("video", "audio"):   # applied bottom-up: --audio-base comes first
        fn = click.option(f"--{modality}-base", type=click.Path(file_okay=False, path_type=Path),
                          default=f"models/base_{modality}", show_default=True)(fn)
    return fn


def guide_outputs(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--out``, ``--checkpoints``, ``--metrics`` and ``--plot`` of the stage that trains the
    guide ``name``: ``models/<name>``, ``checkpoints/<name>``, ``metrics/<name>.json`` and
    ``plots/<name>.csv`` by default."""
    folder, file = (click.Path(file_okay=False, path_type=Path),
                    click.Path(dir_okay=False, path_type=Path))
    options = [
        click.option("--out", type=folder, default=f"models/{name}", show_default=True),
        click.option("--checkpoints", type=folder, default=f"checkpoints/{name}",
                     show_default=True),
        click.option("--metrics", "metrics_path", type=file, default=f"metrics/{name}.json",
                     show_default=True),
        click.option("--plot", "plot_path", type=file, default=f"plots/{name}.csv",
                     show_default=True)]

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):   # applied bottom-up: --out comes first
            fn = option(fn)
        return fn
    return apply


def load(params_path: Path) -> Params:
    """Load and validate the params file, turning a bad value into a clean CLI error."""
    try:
        return load_params(params_path)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Report expected failures (bad input files, missing outputs) as one clean line."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
            if isinstance(e, click.ClickException):
                raise
            raise click.ClickException(f"{type(e).__name__}: {e}") from e
    return wrapper


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.t0, 3)
