"""Params loading: defaults, overrides, and errors that name the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmdisco import config, schema
from mmdisco.config import (ConfigError, Params, TinyBaseConfig, build, check_config, check_keys,
                            flatten, load_params, merge, to_dict)

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, raw: dict) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_repo_params_load_and_match_dataclass_defaults():
    params = load_params(ROOT / "params.yaml")
    assert params == Params(), "params.yaml and the dataclass defaults disagree"
    assert params.data.clip.num_frames == 8 and params.data.clip.num_samples == 8000


def test_override_by_dotted_key(tmp_path):
    p = load_params(ROOT / "params.yaml", overrides={"data.synth.num_classes": 8})
    assert p.data.synth.num_classes == 8


@pytest.mark.parametrize("raw, key", [
    ({"data": {"synth": {"num_clases": 4}}}, "data.synth.num_clases"),
    ({"data": {"synth": {"num_classes": 1}}}, "data.synth.num_classes"),
    ({"data": {"synth": {"num_classes": 9}}}, "data.synth.num_classes"),
    ({"data": {"synth": {"num_classes": "four"}}}, "data.synth.num_classes"),
    ({"data": {"clip": {"fps": 0}}}, "data.clip.fps"),
    ({"data": {"clip": {"seconds": 0}}}, "data.clip.seconds"),
    ({"data": {"source": "youtube"}}, "data.source"),
    ({"data": {"source": "folder"}}, "data.folder"),
    ({"data": {"clip": {"seconds": 0.3}}}, "data.clip.seconds"),
    ({"data": {"clip": {"sample_rate": 4000}}}, "data.clip.sample_rate"),
    ({"data": {"synth": {"min_period": 5, "max_period": 4}}}, "max_period"),
    ({"seed": -1}, "seed"),
    ({"seed": True}, "seed"),
    ({"bogus": 1}, "bogus"),
    ({"encoders": {"audio": {"kind": "wav2vec"}}}, "encoders.audio.kind"),
    ({"eval": {"confidence": float("nan")}}, "eval.confidence"),
    ({"device": "gpu"}, "device must be auto"),
    ({"encoders": {"video": {"device": "gpu"}}}, "encoders.video.device must be auto"),
    ({"encoders": {"video": {"kind": "sd_vae"}}}, "encoders.video.model must name the sd_vae"),
    ({"base": {"audio": {"pretrained": {"device": "tpu"}}}}, "base.audio.pretrained.device"),
])
def test_bad_values_name_the_key(tmp_path, raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_params(write(tmp_path, raw))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_flatten_for_mlflow():
    flat = flatten(to_dict(Params()))
    assert flat["data.synth.num_classes"] == 4
    assert flat["encoders.audio.kind"] == "logmel"


@pytest.mark.parametrize("section", ["fakes", "sample"])
def test_ddpm_with_a_ddim_eta_fails_at_load_not_after_training(section):
    root = Path(__file__).resolve().parents[1]
    with pytest.raises(ConfigError, match=f"{section}.eta is DDIM's; set it to 0 with {section}.kind: ddpm"):
        load_params(root / "params.yaml", {f"{section}.kind": "ddpm"})
    assert getattr(load_params(root / "params.yaml", {f"{section}.kind": "ddpm",
                                                     f"{section}.eta": 0.0}), section).kind == "ddpm"


def test_schema_names_are_importable_from_the_loader():
    for name in ("Params", "ConfigError", "BaseModelsConfig", "TrainBaseConfig", "check_range"):
        assert getattr(schema, name) is getattr(config, name)
    assert type(Params().base) is schema.BaseModelsConfig


def test_merge_is_deep_and_replaces_lists_and_scalars():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 0}
    out = merge(base, {"a": {"c": [3]}, "e": {"f": None}})
    assert out == {"a": {"b": 1, "c": [3]}, "d": 0, "e": {"f": None}}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 0}          # not modified


def test_check_keys_takes_a_partial_mapping_and_names_the_bad_key():
    check_keys(Params, {"data": {"clip": {"seconds": 2.0}}, "cfg": {"audio": 3}})
    with pytest.raises(ConfigError, match=r"unknown key data\.clip\.sise .*'size'"):
        check_keys(Params, {"data": {"clip": {"sise": 2}}})
    with pytest.raises(ConfigError, match="data must be a mapping"):
        check_keys(Params, {"data": "folder"})


def test_check_config_applies_the_file_rules_to_a_config_built_in_code():
    assert check_config(TinyBaseConfig(), "m") == TinyBaseConfig()
    with pytest.raises(ConfigError, match=r"m\.patch must be >= 1"):
        check_config(TinyBaseConfig(patch=0), "m")
    with pytest.raises(ConfigError, match=r"m\.channels\[0\]"):
        check_config(TinyBaseConfig(channels=(30, 64)), "m")
    assert build(TinyBaseConfig, {"patch": 2}, "m") == check_config(TinyBaseConfig(patch=2), "m")
