"""`mmdisco report`: eval.json as a Markdown table, with intervals, counts and clear errors."""
from __future__ import annotations

import json

from click.testing import CliRunner

from mmdisco.eval.report import cell, main, markdown_table

SECTION = {"validity_audio": 0.9, "validity_video": 0.85, "semantic_agreement": 0.75,
           "semantic_agreement_ci": [0.7, 0.8], "semantic_agreement_n": 400,
           "temporal_f1": 0.5, "temporal_f1_ci": [0.45, 0.55], "aligned_fraction": None,
           "aligned_fraction_ci": [None, None], "fd_audio": 1.25}


def test_cells_show_value_interval_and_count():
    assert cell(SECTION, "semantic_agreement") == "0.750 [0.70, 0.80] (n=400)"
    assert cell(SECTION, "temporal_f1") == "0.500 [0.45, 0.55]"
    assert cell(SECTION, "validity_audio") == "0.900"
    assert cell(SECTION, "aligned_fraction") == "–" and cell(SECTION, "fd_video") == "–"


def test_table_orders_sections_and_keeps_extra_ones():
    report = {"guided": SECTION, "real": SECTION, "k8": SECTION}
    lines = markdown_table(report, ("validity_audio", "fd_audio")).splitlines()
    assert lines[0] == "| set | valid audio | FD audio |" and lines[1] == "|---|---|---|"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| real", "| guided", "| k8"]
    assert lines[2].endswith("| 0.900 | 1.250 |")


def test_command_reads_files_and_names_bad_ones(tmp_path):
    good = tmp_path / "eval.json"
    good.write_text(json.dumps({"real": SECTION, "baseline": SECTION}))
    out = CliRunner().invoke(main, [str(good), "--columns", "semantic_agreement"])
    assert out.exit_code == 0 and "| baseline | 0.750 [0.70, 0.80] (n=400) |" in out.output
    two = CliRunner().invoke(main, [str(good), str(good)])
    assert two.exit_code == 0 and two.output.count("| set |") == 2 and f"**{good}**" in two.output
    missing = CliRunner().invoke(main, [str(tmp_path / "nope.json")])
    assert missing.exit_code != 0 and "nope.json: no such file" in missing.output
    (tmp_path / "bad.json").write_text("{")
    bad = CliRunner().invoke(main, [str(tmp_path / "bad.json")])
    assert bad.exit_code != 0 and "not valid JSON" in bad.output
    (tmp_path / "other.json").write_text("[1, 2]")
    other = CliRunner().invoke(main, [str(tmp_path / "other.json")])
    assert other.exit_code != 0 and "not an evaluate report" in other.output


def test_default_table_shows_balance_and_frechet_beside_alignment(tmp_path):
    """A collapse onto a few classes, or a worse FD, cannot hide behind semantic agreement."""
    collapsed = {**SECTION, "class_balance_audio": 0.61, "class_balance_video": 0.59,
                 "fd_audio": 4.638, "fd_video": 1.504}
    (tmp_path / "eval.json").write_text(json.dumps({"guided": collapsed}))
    out = CliRunner().invoke(main, [str(tmp_path / "eval.json")])
    head, _, row = out.output.strip().splitlines()
    assert "balance audio | balance video | FD audio | FD video |" in head
    assert row.endswith("| 0.610 | 0.590 | 4.638 | 1.504 |")
