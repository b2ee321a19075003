"""The README's HTTP walk-through is what ``docs/walkthrough.sh`` runs, and it runs: an empty
consortium and three banks, real processes, to a published model that scores, and the schedule."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from fedfraud.localnet import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "docs" / "walkthrough.sh"


def test_the_readme_shows_the_script_verbatim() -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- walkthrough:start -->\n```sh\n(.*?)```\n<!-- walkthrough:end -->", readme, re.S)
    assert block is not None, "the README lost its walk-through block"
    assert block.group(1) == SCRIPT.read_text().split("\n", 1)[1]


def test_the_walkthrough_runs_from_an_empty_consortium_to_a_scoring_model(tmp_path: Path) -> None:
    env = {**os.environ, "WORK": str(tmp_path / "work"), "PORT": str(free_port()), "SCORING_PORT": str(free_port()),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("FEDFRAUD_DATABASE_URL", None)
    env.pop("FEDFRAUD_BLOB_DIR", None)
    done = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert re.search(r"model version 1 saved to .*model\.json", output)
    assert re.search(r"scored \d+ transactions of 2018-05-19", output)
    answer = re.search(r'^\{"decision".*\}$', output, re.M)  # the risk team's answer, one JSON line
    assert answer is not None, output[-3000:]
    scored = json.loads(answer.group(0))
    assert scored["transaction_id"] == 900000001 and scored["model_version"] == "1"
    assert scored["decision"] in ("alert", "pass") and len(scored["reasons"]) == 3 and scored["reasons_exact"]
    assert "xgboost  on  cron '0 2 * * *'" in output
    assert "Traceback" not in output
