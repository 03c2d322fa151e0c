"""The MLflow UI, rendered in headless Chromium, shows an evaluate run's params, metrics and mp4s.

Builds a tiny MLflow store in tmp_path (no pipeline run) and checks it with the same code as
`bench/mlflow_ui_check.py`. The browser test is skipped where no Chromium is installed.
"""
from __future__ import annotations

import av  # noqa: F401  (PyAV before decord, see conftest)
import numpy as np
import pytest

from support import uicheck
from mmdisco.data.media import write_av

CHROME = uicheck.find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROME is None, reason="no chromium binary (chromium, chromium-browser, google-chrome); "
                           "install one, e.g. `apt-get install chromium`, to run the UI check")


def _store(tmp_path) -> tuple[str, str]:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("mmdisco", artifact_location=(tmp_path / "mlruns").as_uri())

    clip = tmp_path / "pair_000.mp4"
    video = np.zeros((8, 32, 32, 3), np.uint8)
    video[4] = 230
    audio = np.zeros(8000, np.float32)
    audio[4000:4010] = 0.8
    write_av(clip, video, 8, audio, 8000, video_options={"preset": "ultrafast"})

    run = client.create_run(exp, run_name="evaluate", tags={uicheck.STAGE_TAG: "evaluate"})
    rid = run.info.run_id
    for k, v in {"guidance.scale": "4.0", "sample.steps": "25", "data.source": "synth"}.items():
        client.log_param(rid, k, v)
    for k, v in {"guided.temporal_f1": 0.625, "guided.semantic_agreement": 0.5,
                 "baseline.temporal_f1": 0.25}.items():
        client.log_metric(rid, k, v)
    client.log_artifact(rid, str(clip), "guided/media")
    client.set_terminated(rid)
    # a newer run of another stage, which the check must not pick
    other = client.create_run(exp, run_name="train", tags={uicheck.STAGE_TAG: "train"})
    client.log_param(other.info.run_id, "guidance.scale", "99")
    client.set_terminated(other.info.run_id)
    return uri, rid


@needs_chromium
def test_mlflow_ui_shows_evaluate_run(tmp_path):
    uri, rid = _store(tmp_path)
    shot = tmp_path / "run.png"
    result = uicheck.check_run_page(uri, chrome=CHROME, screenshot_path=shot,
                                    dom_dir=tmp_path / "dom", budget_ms=10000)
    assert result.run_id == rid
    assert result.params == {"guidance.scale": "4.0", "sample.steps": "25"}
    assert result.metrics == ["guided.temporal_f1", "guided.semantic_agreement"]
    assert result.media == ["pair_000.mp4"]
    assert result.video_player
    assert result.media_http == ["guided/media/pair_000.mp4"]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_evaluate_run_is_a_clear_error(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("mmdisco", artifact_location=(tmp_path / "mlruns").as_uri())
    client.set_terminated(client.create_run(exp, tags={uicheck.STAGE_TAG: "train"}).info.run_id)
    with pytest.raises(uicheck.UICheckError, match="no FINISHED run tagged mmdisco.stage"):
        uicheck.find_evaluate_run(uri)
