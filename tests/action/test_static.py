"""Static checks of action.yml and every workflow file: actionlint, zizmor --offline, the GitHub JSON schemas,
shellcheck on the action's own scripts, and the conventions we promise (inputs only through env:)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from actkit import REPO_ROOT

ACTION = REPO_ROOT / "action.yml"
WORKFLOWS = sorted(
    [*REPO_ROOT.glob(".github/workflows/*.yml"), *REPO_ROOT.glob("examples/workflows/*.yml"),
     *REPO_ROOT.glob("tests/action/workflows/*.yml"), *REPO_ROOT.glob("tests/action/consumer/.github/workflows/*.yml")])


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(f"{name} not installed (it is in the `test` extra)")
    return path


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def _rel(paths) -> list[str]:
    return [str(p.relative_to(REPO_ROOT)) for p in paths]


def test_there_is_something_to_check():
    names = set(_rel(WORKFLOWS))
    assert {".github/workflows/ci.yml", ".github/workflows/lint-actions.yml", ".github/workflows/release.yml",
            "examples/workflows/merge-on-push.yml", "examples/workflows/scheduled-sync.yml",
            "tests/action/workflows/local-push.yml"} <= names


def test_actionlint():
    proc = _run(_tool("actionlint"), "-no-color", *_rel(WORKFLOWS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zizmor_offline():
    proc = _run(_tool("zizmor"), "--offline", "--no-progress", "--config", ".github/zizmor.yml", "action.yml",
                *_rel(WORKFLOWS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("schema, files", [("vendor.github-actions", ["action.yml"]),
                                           ("vendor.github-workflows", _rel(WORKFLOWS))])
def test_json_schema(schema, files):
    proc = _run(_tool("check-jsonschema"), "--builtin-schema", schema, *files)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _action() -> dict:
    return yaml.safe_load(ACTION.read_text())


def test_action_scripts_pass_shellcheck(tmp_path):
    shellcheck = _tool("shellcheck")
    for i, step in enumerate(_action()["runs"]["steps"]):
        if "run" not in step:
            continue
        script = tmp_path / f"step{i}.sh"
        script.write_text("#!/usr/bin/env bash\nset -eo pipefail\n" + step["run"])
        proc = _run(shellcheck, "-s", "bash", str(script))
        assert proc.returncode == 0, f"step {step.get('name')}:\n{proc.stdout}{proc.stderr}"


def test_inputs_reach_scripts_only_through_env():
    action = _action()
    assert action["runs"]["using"] == "composite"
    for step in action["runs"]["steps"]:
        assert "uses" not in step, "the action calls no remote actions (they would not run offline)"
        assert step.get("shell") == "bash"
        assert "${{" not in step["run"], f"expression inside run: of step {step.get('name')}"
        for value in (step.get("env") or {}).values():
            assert re.fullmatch(r"\$\{\{ [\w.-]+ \}\}|[^$]*", str(value)), value
    for workflow in WORKFLOWS:
        doc = yaml.safe_load(workflow.read_text())
        for job in doc["jobs"].values():
            for step in job.get("steps", []):
                assert "${{" not in step.get("run", ""), f"{workflow.name}: expression inside run:"


def test_declared_inputs_and_outputs():
    action = _action()
    assert {"spec", "mode", "hf-token", "device", "create-pr", "private", "dry-run", "python-version",
            "extra-args", "install", "torch-index-url"} <= set(action["inputs"])
    assert {"changed", "commit-url", "revision", "pr-url"} <= set(action["outputs"])
    assert action["inputs"]["hf-token"]["default"] == "" and not action["inputs"]["hf-token"].get("required")


def test_remote_actions_pinned_to_current_majors():
    for workflow in [*WORKFLOWS, ACTION]:
        for ref in re.findall(r"uses:\s*(actions/[\w-]+)@(\S+)", workflow.read_text()):
            assert ref in {("actions/checkout", "v6"), ("actions/setup-python", "v6")}, (workflow.name, ref)


def test_readme_workflows_are_clean(tmp_path):
    """The copy-paste workflows of the README's "GitHub Action" section pass the same checks."""
    section = (REPO_ROOT / "README.md").read_text().split("## GitHub Action\n")[1].split("\n## ")[0]
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", section, re.S) if "\njobs:" in b]
    assert len(blocks) >= 3
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True)
    files = []
    for i, block in enumerate(blocks):
        (folder / f"readme{i}.yml").write_text(block)
        files.append(str(folder / f"readme{i}.yml"))
    for cmd in ([_tool("actionlint"), "-no-color", *files],
                [_tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *files],
                [_tool("zizmor"), "--offline", "--no-progress", "--config", ".github/zizmor.yml", *files]):
        proc = _run(*cmd)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_action_torch_range_matches_pyproject():
    torch_req = re.search(r'^\s*"(torch[<>=!~][^"]*)"', (REPO_ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert f'"{torch_req}"' in ACTION.read_text(), f"action.yml installs torch with a range other than {torch_req}"
