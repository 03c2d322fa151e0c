"""Params loading: defaults, overrides, and errors that name the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmdisco.config import ConfigError, Params, flatten, load_params, to_dict

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
