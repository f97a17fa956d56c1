"""$GITHUB_OUTPUT and $GITHUB_STEP_SUMMARY as the CLI writes them (in-process, against the loopback Hub)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from actkit import SPEC, read_pairs

from hubmerge.cli import main
from hubmerge.commands import ci_outputs


@pytest.fixture
def gha_files(tmp_path, monkeypatch):
    out, summary = tmp_path / "output.txt", tmp_path / "summary.md"
    out.touch()
    summary.touch()
    monkeypatch.setenv("GITHUB_OUTPUT", str(out))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))

    def take():
        pairs, text = read_pairs(out), summary.read_text()
        out.write_text("")
        summary.write_text("")
        return pairs, text

    return take


def test_push_writes_outputs_and_summary(hub, upstream, repo_id_factory, tmp_path, gha_files, hub_token):
    target = repo_id_factory()
    spec = tmp_path / "spec.yml"
    spec.write_text(SPEC.format(**upstream) + f"hubmerge:\n  target: {target}\n")

    assert main(["push", str(spec), "-q"]) == 0
    outputs, summary = gha_files()
    head = hub.head(target)
    assert outputs == {"changed": "true", "commit-url": outputs["commit-url"], "revision": head, "pr-url": ""}
    assert head in outputs["commit-url"]
    assert f"## hubmerge push: [{target}]" in summary
    for role, repo in upstream.items():
        assert f"[{repo}]({hub.url}/{repo})" in summary
        assert f"[`{hub.head(repo)[:12]}`]({hub.url}/{repo}/commit/{hub.head(repo)})" in summary
    assert "| base | [" + upstream["base"] in summary
    assert "this is the first merge" in summary
    graph = summary.split("### Lineage\n\n```mermaid\n")[1].split("```")[0]  # the Hub's family tree
    assert target in graph and all(repo in graph for repo in upstream.values())
    assert hub_token not in summary

    # An upstream moves: the next push records the change (old -> new SHA) in the summary.
    old_chat = hub.head(upstream["chat"])
    new_chat = hub.commit_files(upstream["chat"], {"NOTES.md": "new commit, same weights"})
    assert main(["push", str(spec), "-q"]) == 0
    outputs, summary = gha_files()
    assert outputs["changed"] == "true" and outputs["revision"] == hub.head(target) != head
    changes = summary.split("### Upstream changes")[1].split("###")[0]
    assert f"`{upstream['chat']}`" in changes and old_chat[:12] in changes and new_chat[:12] in changes
    assert upstream["math"] not in changes
    assert "| Previous |" in summary

    # Nothing moved: no commit, changed=false, revision = the current head.
    assert main(["push", str(spec), "-q"]) == 0
    outputs, summary = gha_files()
    assert outputs == {"changed": "false", "commit-url": "", "revision": hub.head(target), "pr-url": ""}
    assert "Up to date" in summary and "None: every source is at the revision pinned" in summary


def test_create_pr_sets_pr_url(hub, upstream, repo_id_factory, tmp_path, gha_files):
    target = repo_id_factory()
    hub.create_repo(target)
    spec = tmp_path / "spec.yml"
    spec.write_text(SPEC.format(**upstream) + f"hubmerge:\n  target: {target}\n")
    assert main(["push", str(spec), "--create-pr", "-q"]) == 0
    outputs, summary = gha_files()
    assert outputs["changed"] == "true" and "/discussions/" in outputs["pr-url"]
    assert outputs["revision"] == hub.head(target, "refs/pr/1")
    assert "Opened a pull request" in summary


def test_check_and_sync_write_outputs(hub, upstream, repo_id_factory, tmp_path, gha_files):
    target = repo_id_factory()
    spec = tmp_path / "spec.yml"
    spec.write_text(SPEC.format(**upstream) + f"hubmerge:\n  target: {target}\n")
    assert main(["push", str(spec), "-q"]) == 0
    gha_files()

    assert main(["check", target, "-q"]) == 0
    outputs, summary = gha_files()
    assert outputs["stale"] == "false" and outputs["changed"] == "false" and outputs["revision"] == hub.head(target)
    assert "is up to date" in summary

    hub.commit_files(upstream["math"], {"NOTES.md": "moved"})
    assert main(["check", target, "-q"]) == 10
    outputs, summary = gha_files()
    assert outputs["stale"] == "true"
    assert "**stale**" in summary and "| **yes** |" in summary and "```mermaid" in summary

    assert main(["sync", target, "-q"]) == 0
    outputs, summary = gha_files()
    assert outputs["changed"] == "true" and outputs["revision"] == hub.head(target) and outputs["commit-url"]
    assert "Re-merged and pushed" in summary and upstream["math"] in summary.split("### Upstream changes")[1]


def test_validate_writes_a_plan_summary(tmp_path, local_family, gha_files):
    spec = tmp_path / "spec.yml"
    spec.write_text(SPEC.format(base=local_family / "base", chat=local_family / "chat", math=local_family / "math"))
    assert main(["validate", str(spec), "-q"]) == 0
    outputs, summary = gha_files()
    assert outputs == {}
    assert "## hubmerge validate: `ties` merge of 3 models" in summary and "nothing was pushed" in summary
    assert "local folder" in summary and "```mermaid" in summary


def test_lineage_falls_back_to_the_direct_parents(monkeypatch):
    sources = [ci_outputs.Source("org/base", "b" * 40, True, "base"), ci_outputs.Source("org/chat", "c" * 40, True)]
    import hubmerge.hub.lineage as lineage

    monkeypatch.setattr(lineage, "lineage_of", lambda *a, **k: 1 / 0)
    block = ci_outputs.lineage_block(sources, "me/merged", revision="d" * 40, hub=object(), from_hub=True)
    assert block == ci_outputs.mermaid_lineage(sources, "me/merged", revision="d" * 40)
    assert block == (  # drawn by the one lineage renderer (hubmerge.output.lineage), as the card's graph is
        "```mermaid\nflowchart TD\n"
        '  n_me_merged(["me/merged"])\n'
        '  n_org_base["org/base"]\n'
        '  n_org_chat["org/chat"]\n'
        '  n_org_base -->|"merge (base)"| n_me_merged\n'
        '  n_org_chat -->|"merge"| n_me_merged\n'
        "```\n")


def test_nothing_written_outside_ci(hub, upstream, repo_id_factory, tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_OUTPUT", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert not ci_outputs.enabled()
    ci_outputs.write_outputs({"changed": True})
    ci_outputs.append_summary("# x")
    assert list(tmp_path.iterdir()) == []


def test_output_format_and_escaping(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("GITHUB_OUTPUT", str(out))
    ci_outputs.write_outputs({"a": "one line", "b": "two\nlines", "c": None, "d": False})
    text = out.read_text()
    assert text.startswith("a=one line\nb<<ghadelimiter_")
    delimiter = text.split("b<<")[1].split("\n")[0]
    assert f"b<<{delimiter}\ntwo\nlines\n{delimiter}\nc=\nd=false\n" in text

    sources = [ci_outputs.Source('we"ird|name', "a" * 40, True, "base"), ci_outputs.Source("./local", None, False)]
    table = ci_outputs.sources_table(sources)
    assert "we\"ird\\|name" in table and "local folder" in table
    graph = ci_outputs.mermaid_lineage(sources, "me/out<x>")
    assert "#quot;" in graph and "#lt;x#gt;" in graph and '"' + 'we"ird' not in graph


def test_reporting_never_fails_the_command(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("GITHUB_OUTPUT", str(tmp_path / "missing-dir" / "out"))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "missing-dir" / "summary"))
    result = SimpleNamespace(changed=True, commit_url="u", commit_sha="s" * 40, pr_url=None, content_hash="sha256:x",
                             repo_id="me/x", merge=None)
    ci_outputs.after_push(result, None)  # unwritable files: logged, not raised
    assert "could not write" in caplog.text
