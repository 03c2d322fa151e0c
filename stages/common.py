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
