"""The README's promises: its CLI reference matches the commands, and its first command runs."""

from __future__ import annotations

import re
import runpy
import shutil
import subprocess

from tests.conftest import ROOT, clean_environ, tree_hashes


def test_cli_reference_is_current():
    gen = runpy.run_path(str(ROOT / "scripts" / "cli_reference.py"))
    readme = (ROOT / "README.md").read_text()
    assert gen["updated"](readme) == readme, "README CLI reference is stale: run `python scripts/cli_reference.py`"
    for command in ("upload", "download", "link", "verify"):
        assert f"### `wabucket {command}`" in readme


def test_readme_first_command_runs(tmp_path):
    """The install-and-run line, minus `pip install .` (the package is installed here), in a fresh folder."""
    first = next(line.strip() for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("    pip install ."))
    command = re.sub(r"^pip install \. && ", "", first)
    assert "wabucket" in command and "upload" in command and "download" in command
    work = tmp_path / "work"
    shutil.copytree(ROOT / "examples", work / "examples")
    proc = subprocess.run(["bash", "-c", command], cwd=work, env=clean_environ(tmp_path / "home"),
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "::set-output name=artifact_alias::first" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "dataset/demo-data/first"
    assert tree_hashes(work / "dataset/demo-data/first") == tree_hashes(work / "examples/data")


def test_readme_live_snippet_renders(tmp_path):
    """The README's live.yml snippet, through apolo-flow's own parser and dry-run renderer."""
    from tests.flow_dryrun import GH_ACTION_RE, make_workspace, render_live, split_run_line

    readme = (ROOT / "README.md").read_text()
    snippet = next(block for block in re.findall(r"```yaml\n(.*?)```", readme, re.S) if block.startswith("kind: live"))
    ws = make_workspace(tmp_path / "readme_ws", {"live": re.sub(GH_ACTION_RE, "ws:action.yml", snippet)})
    line = split_run_line(render_live(ws, "upload_model"))
    assert line.args == ["--bucket", "my-bucket", "--project-name", "readme_ws",
                         "upload", "/mnt/models/run-1", "-n", "my-model", "-t", "model"]
    assert line.option_values("volume") == ["storage:models:/mnt/models:ro"]
