"""The GitHub Action run for real by act (host executor, offline) against the loopback test Hub.

* ``uses: ./`` (tests/action/workflows/local-push.yml): push from a Hub repo's README recipe, reusing this
  test environment's interpreter (``install: 'false'``) so no torch is installed again;
* ``uses: org/hubmerge@v1`` (tests/action/consumer/, a user's repo) resolved to a copy of this checkout with
  ``--local-repository``: the action builds its private venv (inheriting this environment's packages, pip
  offline) and pushes a re-merge after an upstream moved;
* the input -> command-line wiring, with a stand-in interpreter that records argv instead of merging.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from actkit import REPO_ROOT, SPEC, needs_act, read_pairs

from hubmerge.hub import Hub
from hubmerge.pipeline.push import push
from hubmerge.spec import parse_spec

pytestmark = [needs_act, pytest.mark.timeout(300)]


def _card_meta(hub, repo: str) -> dict:
    return yaml.safe_load(hub.read_file(repo, "README.md").decode().split("---")[1])


def _assert_token_hidden(run, token: str) -> None:
    """Not in anything act printed. act's --json events also carry each workflow command's raw text, so the
    ::add-mask:: command itself holds the token there (as the runner receives it); nothing else may."""
    scrubbed = []
    for event in run.events:
        if event.get("command") == "add-mask":
            event = {k: v for k, v in event.items() if k not in ("arg", "raw")}
        scrubbed.append(json.dumps(event, ensure_ascii=False))
    other = [line for line in run.stdout.splitlines() if not line.startswith("{")]
    printed = "\n".join(scrubbed + other) + run.stderr
    assert token not in printed and token[:20] not in printed, "the token appears in act's log"


# -- uses: ./ -----------------------------------------------------------------------------------


def test_local_action_pushes_from_a_readme_recipe(hub, upstream, repo_id_factory, run_act, tmp_path, hub_token):
    target = repo_id_factory()
    hub.create_repo(target)
    recipe = yaml.safe_load(SPEC.format(**upstream))
    hub.commit_files(target, {"README.md": "---\nlicense: mit\n" + yaml.safe_dump({"hubmerge": {"recipe": recipe}})
                              + "---\n\n# Mine\n"})
    before = hub.head(target)
    result_file = tmp_path / "outputs.txt"

    run = run_act("workflow_dispatch", workflow="tests/action/workflows/local-push.yml",
                  inputs={"spec": target, "python": sys.executable},
                  env={"HUB_TEST_TOKEN": hub_token, "RESULT_FILE": str(result_file)})
    assert run.succeeded, run.tail()

    # The Hub: one new commit on top of ours, with the merged weights (sharded by extra-args) and the card.
    commits = hub.list_commits(target)
    assert commits[1]["id"] == before and len(commits) == 3
    files = hub.files_at(target)
    shards = [f for f in files if f.endswith(".safetensors")]
    assert len(shards) > 1 and "model.safetensors.index.json" in files and "config.json" in files
    meta = _card_meta(hub, target)
    assert meta["license"] == "mit" and meta["hubmerge"]["content_hash"].startswith("sha256:")
    assert meta["hubmerge"]["recipe"]["base_model"] == f"{upstream['base']}@{hub.head(upstream['base'])}"

    # The outputs, as a later step of the workflow saw them.
    outputs = read_pairs(result_file)
    assert outputs["changed"] == "true" and outputs["revision"] == hub.head(target)
    assert outputs["revision"] in outputs["commit-url"] and outputs["pr-url"] == ""

    # The job summary.
    summary = "\n".join(run.summaries())
    assert f"## hubmerge push: [{target}]" in summary
    assert hub.head(upstream["chat"])[:12] in summary and "```mermaid" in summary

    # The token: passed as a plain value (not a secret), masked by the action, even for later steps.
    _assert_token_hidden(run, hub_token)
    assert "token seen by a later step: ***" in run.messages()


# -- uses: org/hubmerge@v1 from a user's repository -------------------------------------------------


def _release_copy(dest: Path) -> Path:
    """What GitHub serves for `org/hubmerge@v1`: the repository's files (here: tracked + untracked, not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO_ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _consumer_repo(root: Path, spec_text: str) -> Path:
    shutil.copytree(REPO_ROOT / "tests/action/consumer", root)
    (root / "merges").mkdir()
    (root / "merges/spec.yml").write_text(spec_text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "my merge"]):
        subprocess.run([*git, *args], cwd=root, check=True, capture_output=True)
    return root


def test_consumer_workflow_with_published_action_syntax(hub, upstream, repo_id_factory, run_act, tmp_path, hub_token):
    target = repo_id_factory()
    spec_text = SPEC.format(**upstream) + f"hubmerge:\n  target: {target}\n"
    # Merged once already; then an upstream moved (new commit, same weights).
    push(parse_spec(spec_text), hub=Hub(endpoint=hub.url, use_cache=False), show_progress=False)
    first = hub.head(target)
    old_chat = hub.head(upstream["chat"])
    new_chat = hub.commit_files(upstream["chat"], {"NOTES.md": "moved"})

    consumer = _consumer_repo(tmp_path / "consumer", spec_text)
    release = _release_copy(tmp_path / "hubmerge-v1")
    result_file = tmp_path / "outputs.txt"
    run = run_act("push", cwd=consumer, secrets={"HF_TOKEN": hub_token},
                  variables={"HUBMERGE_TEST_PYTHON": sys.executable}, env={"RESULT_FILE": str(result_file)},
                  extra=["--local-repository", f"org/hubmerge@v1={release}"])
    assert run.succeeded, run.tail()
    assert "org/hubmerge@v1" in run.messages()

    # A second commit on the target, pinning the moved upstream.
    commits = hub.list_commits(target)
    assert commits[1]["id"] == first and hub.head(target) != first
    recipe = _card_meta(hub, target)["hubmerge"]["recipe"]
    assert f"{upstream['chat']}@{new_chat}" in yaml.safe_dump(recipe)

    outputs = read_pairs(result_file)
    assert outputs["changed"] == "true" and outputs["revision"] == hub.head(target)
    assert outputs["python"].endswith("hubmerge-venv/bin/python")  # the action's own venv was built and used

    summary = "\n".join(run.summaries())
    changes = summary.split("### Upstream changes")[1].split("###")[0]
    assert upstream["chat"] in changes and old_chat[:12] in changes and new_chat[:12] in changes
    _assert_token_hidden(run, hub_token)
    assert not (release / "build").exists()  # act ran the action from its own copy


# -- input wiring ---------------------------------------------------------------------------------


@pytest.fixture
def stand_in_python(tmp_path):
    """An 'interpreter' that records `-m hubmerge.cli ARGS` and exits $FAKE_RC; anything else runs real Python."""
    script = tmp_path / "fake-python"
    script.write_text(f"""#!/usr/bin/env bash
if [ "$1" = "-m" ] && [ "$2" = "hubmerge.cli" ]; then
  shift 2
  printf '%s\\0' "$@" > "$FAKE_ARGV_FILE"
  if [ -n "$FAKE_ERROR" ]; then printf 'progress 10%%\\rerror: %s\\n  hint: a hint\\n' "$FAKE_ERROR" >&2; fi
  {{ if [ "$HF_TOKEN" = "$HUB_TEST_TOKEN" ]; then echo token=passed; else echo token=missing; fi
     echo "oidc=$HF_OIDC_RESOURCE"; }} > "$FAKE_ENV_FILE"
  exit "${{FAKE_RC:-0}}"
fi
exec {sys.executable} "$@"
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


SPEC_PATH = "specs/merge.yml"
EVIL = 'x"; touch "$RESULT_FILE.pwned"; echo $(touch "$RESULT_FILE.pwned2") `id`\n::warning::injected'

# case: (action inputs, exit code of the stand-in CLI, job succeeds, expected argv (None: CLI not run),
#        expected `stale` output when it succeeds / a message in the log when it fails)

WIRING = {
    "push-defaults": ({}, 0, True, ["push", SPEC_PATH], ""),
    "push-flags": ({"create-pr": "true", "private": "true", "device": "cuda",
                    "extra-args": "--message 'two words' -q"}, 0,
                   True, ["push", SPEC_PATH, "--device", "cuda", "--create-pr", "--private", "--message", "two words",
                          "-q"], ""),
    "push-dry-run": ({"dry-run": "true", "create-pr": "true"}, 0, True, ["validate", SPEC_PATH], ""),
    "sync-flags": ({"mode": "sync", "create-pr": "true", "private": "true"}, 0, True,
                   ["sync", SPEC_PATH, "--create-pr"], ""),
    "sync-dry-run-stale": ({"mode": "sync", "dry-run": "true"}, 10, True, ["check", SPEC_PATH], "true"),
    "check-up-to-date": ({"mode": "check"}, 0, True, ["check", SPEC_PATH], "false"),
    "check-error": ({"mode": "check"}, 2, False, ["check", SPEC_PATH], ""),
    "push-error": ({}, 2, False, ["push", SPEC_PATH], ""),
    "no-shell-evaluation": ({"spec": EVIL, "extra-args": "--message '$(id)' `id`"}, 0, True,
                            ["push", EVIL, "--message", "$(id)", "`id`"], ""),
    "sync-spec-file": ({"mode": "sync", "spec": "tests/action/fixtures/target-spec.yml"}, 0, True,
                       ["sync", "me/merged-target"], ""),
    "check-spec-file": ({"mode": "check", "spec": "tests/action/fixtures/target-spec.yml"}, 10, True,
                        ["check", "me/merged-target"], "true"),
    "sync-spec-without-target": ({"mode": "sync", "spec": "examples/demo.yml"}, 0, False, None, "needs a Hub repo id"),
    "push-spec-file-stays-a-file": ({"spec": "tests/action/fixtures/target-spec.yml"}, 0, True,
                                    ["push", "tests/action/fixtures/target-spec.yml"], ""),
    "unknown-mode": ({"mode": "merge-everything"}, 0, False, None, "unknown mode"),
}


@pytest.mark.parametrize("case", list(WIRING))
def test_inputs_become_arguments(case, run_act, stand_in_python, tmp_path, hub_token):
    inputs, rc, success, argv, stale = WIRING[case]
    files = {name: tmp_path / name for name in ("argv", "env", "outputs")}
    run = run_act("workflow_dispatch", workflow="tests/action/workflows/wiring.yml",
                  inputs={"python": str(stand_in_python), **inputs},
                  env={"FAKE_RC": str(rc), "FAKE_ARGV_FILE": str(files["argv"]), "FAKE_ENV_FILE": str(files["env"]),
                       "RESULT_FILE": str(files["outputs"]), "HUB_TEST_TOKEN": hub_token})
    assert run.succeeded == success, run.tail()
    if argv is None:
        assert not files["argv"].exists() and stale in run.messages()
        return
    assert files["argv"].read_bytes().decode().split("\0")[:-1] == argv
    assert read_pairs(files["env"]) == {"token": "passed", "oidc": "me/merged"}
    if success:
        assert read_pairs(files["outputs"]) == {"stale": stale, "python": str(stand_in_python)}
    assert not list(tmp_path.glob("outputs.txt.pwned*"))
    assert not [e for e in run.events if e.get("command") == "warning"], "an input started a workflow command"
    _assert_token_hidden(run, hub_token)


def test_cli_error_becomes_an_annotation(run_act, stand_in_python, tmp_path, hub_token):
    """A failing CLI's `error:` line (after a progress bar's carriage return) is annotated, % kept, and the
    job fails with the CLI's exit code; the hint stays in the log."""
    message = "merge.yml: models[0].parameters.weight: must be finite (50% of 'x::y')"
    files = {name: tmp_path / name for name in ("argv", "env", "outputs")}
    run = run_act("workflow_dispatch", workflow="tests/action/workflows/wiring.yml",
                  inputs={"python": str(stand_in_python)},
                  env={"FAKE_RC": "2", "FAKE_ERROR": message, "FAKE_ARGV_FILE": str(files["argv"]),
                       "FAKE_ENV_FILE": str(files["env"]), "RESULT_FILE": str(files["outputs"]),
                       "HUB_TEST_TOKEN": hub_token})
    assert not run.succeeded
    errors = [e for e in run.events if e.get("command") == "error"]
    assert len(errors) == 1, run.tail()
    assert errors[0]["arg"] == message.replace("::", ": :"), errors
    assert "a hint" in run.messages()
    _assert_token_hidden(run, hub_token)
