"""CI runs every test: the system tools that some tests skip without are there.

`.ci/run` installs Chromium (the MLflow UI browser check) and the ffmpeg command line (part of
the hostile-media corpus). On a developer machine without them those tests skip with a
message; under CI (``CI`` set, as CI services do) a missing tool is a failure, so a skip can
never hide an unchecked path.
"""
from __future__ import annotations

import os
import shutil

import pytest

from support import uicheck


@pytest.mark.skipif(not os.environ.get("CI"), reason="only CI must have every system tool")
@pytest.mark.parametrize("tool", ["chromium", "ffmpeg"])
def test_ci_has_the_system_tools_the_tests_need(tool):
    found = uicheck.find_chromium() if tool == "chromium" else shutil.which("ffmpeg")
    assert found, f"{tool} is missing under CI: .ci/run should have installed it (apt-get install {tool})"
