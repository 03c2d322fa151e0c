"""Loading params: read a YAML file, merge overrides and presets, and build the typed, validated
``Params`` of ``mmdisco.schema``.

Loading rejects unknown keys and out-of-range values with a message that names the dotted key
and what is allowed, before any work starts. The schema's names are importable from here, so
callers need only ``mmdisco.config``.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from mmdisco.schema import (BASE_KINDS, TORCH_DTYPES, AudioEncoderConfig, BaseModelsConfig,
                            CFGConfig, ClipConfig, ConfigError, CriticConfig, DataConfig,
                            DiscriminatorConfig, EncodersConfig, EvalConfig, FakesConfig,
                            GuidanceConfig, Params, PretrainedBaseConfig, RELEASED_SETTINGS,
                            ReleasedGuideConfig, SampleConfig, SynthConfig, TextEncoderConfig,
                            TinyBaseConfig, TrainBaseConfig, VideoEncoderConfig, check_config,
                            check_device, check_range)

__all__ = [
    "BASE_KINDS", "TORCH_DTYPES", "AudioEncoderConfig", "BaseModelsConfig", "CFGConfig",
    "ClipConfig", "ConfigError", "CriticConfig", "DataConfig", "DiscriminatorConfig",
    "EncodersConfig", "EvalConfig", "FakesConfig", "GuidanceConfig", "Params",
    "PretrainedBaseConfig", "RELEASED_SETTINGS", "ReleasedGuideConfig", "SampleConfig",
    "SynthConfig", "TextEncoderConfig", "TinyBaseConfig", "TrainBaseConfig",
    "VideoEncoderConfig", "build", "check_config", "check_device", "check_keys", "check_range",
    "flatten", "load_params", "merge", "read_yaml", "set_dotted", "to_dict",
]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of keys, got {value!r}")
        return build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key} must be a whole number, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        (inner,) = typing.get_args(tp)[:1]
        return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _reject_unknown(cls: type, raw: dict, prefix: str) -> None:
    """Refuse keys that ``cls`` has no field for, suggesting the closest field."""
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(fields), key=str)
    if not unknown:
        return
    where = prefix or "params"
    keys = ", ".join(f"{prefix}.{k}" if prefix else str(k) for k in unknown)
    typos = [f"{k!r} -> {close[0]!r}" for k in unknown
             if (close := difflib.get_close_matches(str(k), fields, n=1))]
    raise ConfigError(f"unknown key {keys} in {where}"
                      + (f" (a typo? {', '.join(typos)})" if typos else "")
                      + f"; remove it or use one of: {', '.join(sorted(fields))}")


def build(cls: type, raw: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, validating every key against its field."""
    _reject_unknown(cls, raw, prefix)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in raw:
            value = _coerce(raw[f.name], hints[f.name], key)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            value = f.default_factory()  # type: ignore[misc]
        check_range(value, dict(f.metadata), key)
        kwargs[f.name] = value
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(prefix or "params")
    return obj


def check_keys(cls: type, raw: dict, prefix: str = "") -> None:
    """Check that every key of a partial mapping (a preset) exists in ``cls``, sections being
    mappings; values are left to ``build``, which sees them merged with the rest."""
    _reject_unknown(cls, raw, prefix)
    hints = typing.get_type_hints(cls)
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(hints[name]):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a mapping of keys, got {value!r}")
            check_keys(hints[name], value, key)


def read_yaml(path: str | Path) -> dict:
    """The mapping a YAML file holds (empty for an empty file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"'{path}' not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections")
    return raw


def merge(base: dict, over: dict) -> dict:
    """``base`` deep-merged with ``over``: mappings merge key by key, any other value of
    ``over`` (lists included) replaces that of ``base``. Neither argument is modified."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    """Read, merge ``overrides`` (dotted keys) and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file '{path}' not found; run from the repository root or "
                          f"pass --params")
    raw = read_yaml(path)
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    try:
        return build(Params, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def set_dotted(raw: dict, dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out
