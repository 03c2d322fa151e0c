"""Atomic writes never leave a half-written output behind."""
from __future__ import annotations

import pytest
import torch

from mmdisco.io import atomic_path, load_tensors, read_json, save_tensors, write_json


def test_atomic_file_and_folder(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    assert read_json(tmp_path / "a.json") == {"x": 1}
    with atomic_path(tmp_path / "d") as tmp:
        tmp.mkdir()
        (tmp / "f").write_text("one")
    with atomic_path(tmp_path / "d") as tmp:          # replacing a folder
        tmp.mkdir()
        (tmp / "g").write_text("two")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["g"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "d"]


def test_failure_keeps_the_old_output_and_leaves_no_temp(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("{partial")
            raise RuntimeError("killed")
    assert read_json(tmp_path / "a.json") == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_tensors_round_trip(tmp_path):
    t = {"a": torch.arange(6, dtype=torch.uint8).reshape(2, 3), "b": torch.randn(4)}
    save_tensors(tmp_path / "t.safetensors", t)
    back = load_tensors(tmp_path / "t.safetensors")
    assert all(torch.equal(back[k], t[k]) for k in t)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_tensors(tmp_path / "none.safetensors")
