"""Safe loading and fail-fast params: no pickle from files, no path outside its folder, bad
params refused by the CLI before anything is written."""
from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from mmdisco import checkpoint
from mmdisco.cli import main
from mmdisco.config import DataConfig
from mmdisco.data.manifest import manifest_files
from mmdisco.data.shards import load_clips
from mmdisco.io import child_path, save_tensors
from support.project import ROOT

SOURCES = sorted((ROOT / "mmdisco").rglob("*.py")) + sorted((ROOT / "stages").rglob("*.py"))


# --------------------------------------------------------------------------- code audit
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = (f"{f.value.id}.{f.attr}" if isinstance(f, ast.Attribute)
                    and isinstance(f.value, ast.Name) else getattr(f, "id", None))
            yield name, node


def test_no_unsafe_deserialisation_in_the_code():
    """Weights and tensors come from safetensors or torch.load(weights_only=True); nothing
    unpickles, evaluates or YAML-loads arbitrary objects."""
    bad = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) \
                    else [node.module or ""]
                bad += [f"{where}:{node.lineno} imports {m}" for m in mods
                        if m.split(".")[0] in {"pickle", "cPickle", "dill", "cloudpickle",
                                               "joblib", "marshal", "shelve"}]
        for name, call in _calls(tree):
            kw = {k.arg: k.value for k in call.keywords}
            line = f"{where}:{call.lineno}"
            if name == "torch.load":
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    bad.append(f"{line} torch.load without weights_only=True")
            elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
                bad.append(f"{line} {name} (use yaml.safe_load)")
            elif name in ("eval", "exec"):
                bad.append(f"{line} {name}()")
            elif name in ("np.load", "numpy.load"):
                ap = kw.get("allow_pickle")
                if isinstance(ap, ast.Constant) and ap.value:
                    bad.append(f"{line} np.load(allow_pickle=True)")
    assert bad == []


def test_a_checkpoint_holding_pickled_code_is_refused(tmp_path):
    """checkpoint.load reads state.pt with weights_only=True: a tampered checkpoint with the
    right fingerprint still cannot run code."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    folder = tmp_path / "ckpt"
    folder.mkdir()
    with open(folder / checkpoint.STATE_FILE, "wb") as f:
        pickle.dump({"step": 3, "model": Evil()}, f, protocol=2)   # torch.load reads these too
    (folder / checkpoint.META_FILE).write_text(json.dumps({"step": 3, "fingerprint": "fp"}))
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only"):
        checkpoint.load(folder, "fp")
    assert not marker.exists()


# --------------------------------------------------------------------------- paths
def _raw(tmp_path: Path, manifest: dict) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir(exist_ok=True)
    (raw / "manifest.json").write_text(json.dumps(manifest))
    return raw


@pytest.mark.parametrize("name", ["../outside.mp4", "/etc/passwd", "a/../../outside.mp4",
                                  "..", ""])
def test_a_manifest_entry_cannot_leave_its_folder(tmp_path, name):
    raw = _raw(tmp_path, {"source": "synth", "root": None, "files": [{"name": "ok.mp4"},
                                                                      {"name": name}]})
    with pytest.raises(ValueError, match="leaves|not a file name"):
        manifest_files(raw, DataConfig())


def test_a_manifest_labels_file_cannot_leave_its_folder(tmp_path):
    (tmp_path / "secret.json").write_text("[]")
    raw = _raw(tmp_path, {"source": "synth", "root": None, "labels": "../secret.json",
                          "files": [{"name": "a.mp4"}]})
    with pytest.raises(ValueError, match="leaves"):
        manifest_files(raw, DataConfig())


def test_a_manifest_root_must_be_the_folder_params_name(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    raw = _raw(tmp_path, {"source": "folder", "root": "/etc", "files": [{"name": "passwd"}]})
    folder = DataConfig(source="folder", folder=str(media))
    with pytest.raises(ValueError, match="stale or was edited"):
        manifest_files(raw, folder)
    with pytest.raises(ValueError, match="stale or was edited"):     # synth: files in raw
        manifest_files(raw, DataConfig())
    ok = _raw(tmp_path, {"source": "folder", "root": str(media.resolve()),
                         "files": [{"name": "sub/a.mp4"}]})
    assert manifest_files(ok, folder)[0] == [media.resolve() / "sub/a.mp4"]


def test_child_path_keeps_inside_names():
    assert child_path("/x", "a/b.mp4", "m.json") == Path("/x/a/b.mp4")
    for name in ("../a", "/a", "a/../../b", None, 3, ""):
        with pytest.raises(ValueError, match="m.json"):
            child_path("/x", name, "m.json")


def _clips(tmp_path: Path, shard_name: str) -> Path:
    clips = tmp_path / "clips"
    clips.mkdir()
    outside = tmp_path / "outside.safetensors"
    save_tensors(outside, {"video": torch.zeros(1, 2, 4, 4, 3, dtype=torch.uint8),
                           "audio": torch.zeros(1, 8)})
    (clips / "index.json").write_text(json.dumps({
        "num_clips": 1, "num_frames": 2, "size": 4, "num_samples": 8, "fps": 2,
        "sample_rate": 8, "shards": [shard_name], "clips": []}))
    return clips


@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_a_clips_index_cannot_read_shards_elsewhere(tmp_path, how):
    name = "../outside.safetensors" if how == "relative" else str(tmp_path / "outside.safetensors")
    clips = _clips(tmp_path, name)
    with pytest.raises(ValueError, match="leaves"):
        load_clips(clips)


def test_the_cli_refuses_a_tampered_index_and_writes_nothing(tmp_path, monkeypatch):
    clips = _clips(tmp_path, "../outside.safetensors")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["encode", "--params", str(ROOT / "params.yaml"),
                                    "--clips", str(clips), "--out", "latents"])
    assert res.exit_code == 1 and "leaves" in res.output, res.output
    assert not (tmp_path / "latents").exists() and not (tmp_path / "mlflow.db").exists()


def test_the_cli_refuses_a_tampered_manifest_and_writes_nothing(tmp_path, monkeypatch):
    raw = _raw(tmp_path, {"source": "synth", "root": None, "files": [{"name": "/etc/passwd"}]})
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["extract-clips", "--params", str(ROOT / "params.yaml"),
                                    "--raw", str(raw), "--out", "clips",
                                    "--metrics", "metrics/extract.json"])
    assert res.exit_code == 1 and "leaves" in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


# --------------------------------------------------------------------------- params
# (stage, override, what the message must name): each is refused before any work
BAD_PARAMS = [
    ("sample", {"guidance": {"scale": -1}}, ["guidance.scale", ">= 0"]),
    ("sample", {"guidance": {"scale": "abc"}}, ["guidance.scale", "must be a number"]),
    ("extract-clips", {"data": {"clip": {"fps": 0}}}, ["data.clip.fps", ">= 1"]),
    ("acquire", {"data": {"source": "folder", "folder": "MISSING"}},
     ["data.folder", "is not a folder", "point data.folder at your media files"]),
    ("extract-clips", {"data": {"source": "folder", "folder": "MISSING"}},
     ["data.folder", "is not a folder", "point data.folder at your media files"]),
    ("train-discriminator", {"discriminator": {"stepz": 10}},
     ["unknown key discriminator.stepz", "'stepz' -> 'steps'", "remove it"]),
    ("sample", {"sampel": {"steps": 3}}, ["unknown key sampel", "'sampel' -> 'sample'"]),
]


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        base[k] = _merge(base.get(k, {}), v) if isinstance(v, dict) and k in base else v
    return base


@pytest.mark.parametrize("stage,override,words", BAD_PARAMS,
                         ids=[f"{s}-{'.'.join(str(x) for x in w[:1])}" for s, _, w in BAD_PARAMS])
def test_bad_params_fail_fast_and_write_nothing(tmp_path, monkeypatch, stage, override, words):
    params = _merge(yaml.safe_load((ROOT / "params.yaml").read_text()), override)
    if params["data"].get("folder") == "MISSING":
        params["data"]["folder"] = str(tmp_path / "missing")
    work = tmp_path / "work"
    work.mkdir()
    (work / "bad.yaml").write_text(yaml.safe_dump(params))
    # every input path exists but holds nothing: only the params can stop the stage here
    (work / "raw").mkdir()
    (work / "raw" / "manifest.json").write_text(json.dumps({"source": "synth", "root": None,
                                                            "files": []}))
    before = sorted(p.name for p in work.rglob("*"))
    monkeypatch.chdir(work)
    monkeypatch.setenv("DVC_ROOT", str(work))
    outs = {"sample": ["--out", "out", "--metrics", "m.json"],
            "extract-clips": ["--raw", "raw", "--out", "out", "--metrics", "m.json"],
            "acquire": ["--out", "out"],
            "train-discriminator": ["--out", "out", "--checkpoints", "ck", "--metrics", "m.json",
                                    "--plot", "p.csv"]}[stage]
    res = CliRunner().invoke(main, [stage, "--params", "bad.yaml", *outs])
    assert res.exit_code == 1, res.output
    msg = " ".join(res.output.split())
    for w in words:
        assert w in msg, (w, msg)
    assert "Traceback" not in res.output
    assert sorted(p.name for p in work.rglob("*")) == before   # no output, no temp, no mlflow.db
