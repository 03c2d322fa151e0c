"""Presets: partial params files merged into params.yaml by `mmdisco preset`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mmdisco.cli import main
from mmdisco.config import ConfigError, Params, flatten, load_params, to_dict
from mmdisco.preset import apply_preset, resolve_preset

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "presets"
PRESETS = sorted(p.stem for p in (ROOT / "params").glob("pretrained-*.yaml"))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of params.yaml and params/, as in the repository root; returns params.yaml."""
    shutil.copyfile(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "params", tmp_path / "params")
    return tmp_path / "params.yaml"


def as_json(params: Params) -> dict:
    return json.loads(json.dumps(to_dict(params)))


def test_the_three_presets_are_there():
    assert PRESETS == ["pretrained-aist", "pretrained-landscape", "pretrained-vggsound"]


@pytest.mark.parametrize("name", PRESETS)
def test_applying_a_preset_gives_what_its_old_full_file_loaded_to(project, name):
    applied = apply_preset(ROOT / "params" / f"{name}.yaml", project)
    expected = json.loads((FIXTURES / f"{name}.json").read_text())
    assert applied.written and as_json(applied.params) == expected
    assert as_json(load_params(project)) == expected       # the file written says the same


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_states_only_what_differs_from_the_defaults(name):
    preset = flatten(yaml.safe_load((ROOT / "params" / f"{name}.yaml").read_text()))
    defaults = flatten(to_dict(load_params(ROOT / "params.yaml")))
    restated = [k for k, v in preset.items() if v == defaults[k]]
    assert not restated, f"params/{name}.yaml restates defaults: {restated}"


def test_only_the_preset_values_change_and_comments_stay(project):
    before = project.read_text().splitlines()
    applied = apply_preset(project.parent / "params" / "pretrained-landscape.yaml", project)
    after = project.read_text().splitlines()
    assert len(after) == len(before)
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(changed) == len(applied.changes) == 33
    leaves = {key.rsplit(".", 1)[-1] for key, _, _ in applied.changes}
    for old, new in changed:
        assert old.split(":")[0] == new.split(":")[0] and old.split(":")[0].strip() in leaves
        if "#" in old:
            assert new.endswith(old[old.index("#"):])          # the key's comment is kept


def test_unknown_preset_key_names_key_and_file_and_writes_nothing(project, tmp_path):
    preset = tmp_path / "typo.yaml"
    preset.write_text("data:\n  clip:\n    sise: 32\n")
    before = project.read_bytes()
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown key data\.clip\.sise .*'size'"):
        apply_preset(preset, project)
    assert project.read_bytes() == before
    assert sorted(p.name for p in project.parent.iterdir()) == ["params", "params.yaml",
                                                                 "typo.yaml"]


@pytest.mark.parametrize("text, match", [
    ("fakes:\n  kind: ddpm\n", r"applied to .*params\.yaml: fakes\.eta is DDIM's"),
    ("data: folder\n", r"bad\.yaml: data must be a mapping"),
    ("- a list\n", r"bad\.yaml must hold a mapping"),
    ("seed: -1\n", r"seed must be >= 0"),
])
def test_an_invalid_result_writes_nothing(project, tmp_path, text, match):
    preset = tmp_path / "bad.yaml"
    preset.write_text(text)
    before = project.read_bytes()
    with pytest.raises(ConfigError, match=match):
        apply_preset(preset, project)
    assert project.read_bytes() == before


def test_reapplying_merges_onto_the_current_params_and_reset_starts_from_defaults(project):
    folder = project.parent / "params"
    apply_preset(folder / "pretrained-vggsound.yaml", project)
    merged = apply_preset(folder / "pretrained-landscape.yaml", project, write=False)
    assert merged.params.condition == "caption"                   # kept from VGGSound
    assert {"condition", "data.captions", "cfg.audio"} <= set(merged.kept)
    reset = apply_preset(folder / "pretrained-landscape.yaml", project, reset=True)
    assert reset.kept == []
    assert as_json(load_params(project)) == json.loads(
        (FIXTURES / "pretrained-landscape.json").read_text())
    assert not apply_preset(folder / "pretrained-landscape.yaml", project).written  # no change


def test_reset_with_an_empty_preset_restores_the_defaults(project, tmp_path):
    apply_preset(project.parent / "params" / "pretrained-vggsound.yaml", project)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    apply_preset(empty, project, reset=True)
    assert load_params(project) == Params()
    assert project.read_text() == (ROOT / "params.yaml").read_text()


def test_strings_a_yaml_1_1_reader_would_retype_are_quoted(project, tmp_path):
    preset = tmp_path / "words.yaml"
    preset.write_text('sample:\n  prompts: ["on", "no", "1e3", "a: b"]\n')
    apply_preset(preset, project)
    assert load_params(project).sample.prompts == ("on", "no", "1e3", "a: b")


def test_a_preset_by_name_or_path(project):
    assert resolve_preset("pretrained-aist", project) == project.parent / "params" / \
        "pretrained-aist.yaml"
    with pytest.raises(ConfigError, match="one of: pretrained-aist, pretrained-landscape"):
        resolve_preset("aist++", project)


def test_cli_applies_a_named_preset_and_dry_run_writes_nothing(project):
    before = project.read_bytes()
    args = ["preset", "pretrained-vggsound", "--params", str(project)]
    dry = CliRunner().invoke(main, args + ["--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "nothing written" in dry.output and project.read_bytes() == before
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "43 values" in result.output and "condition: none -> caption" in result.output
    assert load_params(project).condition == "caption"
    bad = CliRunner().invoke(main, ["preset", "nope", "--params", str(project)])
    assert bad.exit_code != 0 and "no preset 'nope'" in bad.output
