"""The command line: argument parsing and error printing, nothing else."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path

from hubmerge import __version__
from hubmerge.errors import HubmergeError

logger = logging.getLogger("hubmerge")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars, warnings only")


def _add_hub(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    p.add_argument("--download", action="store_true",
                   help="download Hub inputs into the HF cache first instead of streaming them")


def _add_pickle(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-pickle", action="store_true",
                   help="read inputs that only have pytorch_model*.bin pickles (with torch.load(weights_only=True)); "
                        "off by default because unpickling can run arbitrary code")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hubmerge", description="Hub-native streaming model merging")
    parser.add_argument("--version", action="version", version=f"hubmerge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("merge", help="merge the models of a spec into a local folder")
    m.add_argument("spec", help="spec file (mergekit-compatible YAML)")
    m.add_argument("-o", "--output", required=True, help="output folder")
    m.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    m.add_argument("--max-shard-size", default=None, help="bytes per output shard, e.g. 5GB, 500MB (default 5GB)")
    m.add_argument("--resume", action="store_true", help="reuse fully written shards of an interrupted run")
    m.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    _add_pickle(m)
    _add_hub(m)
    _add_common(m)

    p = sub.add_parser("push", help="merge and push the result to the Hub as one commit")
    p.add_argument("spec", help="spec file, or a Hub repo id whose README holds the recipe under 'hubmerge:'")
    p.add_argument("--repo", default=None, help="target repo id (default: the spec's hubmerge.target)")
    p.add_argument("--private", action="store_true", default=None, help="create the repo private")
    p.add_argument("--create-pr", action="store_true", default=None, help="open a Hub pull request instead")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument("--max-shard-size", default=None, help="bytes per output shard (default 5GB)")
    p.add_argument("--open-pr", action="store_true",
                   help="open a Hub pull request for a merge split into parts, print its number, merge nothing")
    p.add_argument("--part", default=None, metavar="I/N", help="merge only part I of N and commit it into --pr")
    p.add_argument("--pr", type=int, default=None, metavar="NUM", help="the pull request the parts go into")
    p.add_argument("--gate-eval", default=None, metavar="EVAL",
                   help="evaluate the merge before committing (ppl:FILE.txt or jsonl:FILE.jsonl) and refuse to push "
                        "one worse than --max-ppl-ratio times its best parent")
    p.add_argument("--max-ppl-ratio", type=float, default=1.5, help="allowed ratio for --gate-eval (default 1.5)")
    _add_pickle(p)
    _add_hub(p)
    _add_common(p)

    pl = sub.add_parser("plan", help="split a merge's output shards into parts, balanced by bytes")
    pl.add_argument("spec")
    pl.add_argument("--parts", type=int, required=True)
    pl.add_argument("--max-shard-size", default=None)
    pl.add_argument("--json", action="store_true")
    _add_hub(pl)
    _add_common(pl)

    f = sub.add_parser("finalize", help="check every part of a split merge and merge its pull request")
    f.add_argument("spec")
    f.add_argument("--pr", type=int, required=True, metavar="NUM")
    f.add_argument("--repo", default=None)
    _add_hub(f)
    _add_common(f)

    c = sub.add_parser("check", help="has any tracked upstream of a merged repo moved? (exit 0 up to date, 10 stale)")
    c.add_argument("target", help="Hub repo id of a model pushed by hubmerge")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_hub(c)
    _add_common(c)

    y = sub.add_parser("sync", help="re-merge and push when a tracked upstream moved; otherwise do nothing")
    y.add_argument("target", help="Hub repo id of a model pushed by hubmerge")
    y.add_argument("--create-pr", action="store_true", help="put the re-merge up for review as a Hub pull request")
    y.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    _add_hub(y)
    _add_common(y)

    w = sub.add_parser("webhook", help="receive Hub webhooks and re-merge the targets that track the updated repo")
    wsub = w.add_subparsers(dest="webhook_command", required=True)
    ws = wsub.add_parser("serve", help="run the webhook receiver")
    ws.add_argument("--target", action="append", required=True, dest="targets",
                    help="a merged repo to keep in sync (repeat for several)")
    ws.add_argument("--secret-env", default="HUBMERGE_WEBHOOK_SECRET",
                    help="environment variable holding the webhook secret (default: HUBMERGE_WEBHOOK_SECRET)")
    ws.add_argument("--host", default="127.0.0.1")
    ws.add_argument("--port", type=int, default=8765)
    ws.add_argument("--debounce", type=float, default=10.0, help="seconds of quiet before acting (default 10)")
    ws.add_argument("--dispatch", default=None, metavar="OWNER/REPO",
                    help="send a GitHub repository_dispatch instead of syncing here (token from GITHUB_TOKEN)")
    ws.add_argument("--github-api", default="https://api.github.com")
    ws.add_argument("--create-pr", action="store_true")
    _add_hub(ws)
    _add_common(ws)

    v = sub.add_parser("validate", help="check a spec against its inputs' headers and print the plan")
    v.add_argument("spec")
    v.add_argument("--max-shard-size", default=None)
    v.add_argument("--json", action="store_true", help="print the plan as JSON")
    _add_pickle(v)
    _add_hub(v)
    _add_common(v)

    ln = sub.add_parser("lineage", help="print a model's family tree, read from its card and its parents' cards")
    ln.add_argument("repo", help="Hub repo id (org/name or org/name@revision) or a local model folder")
    ln.add_argument("--format", default="markdown", choices=["mermaid", "markdown", "json", "dot"],
                    help="output format (default: markdown)")
    ln.add_argument("--depth", type=int, default=4, help="generations to walk up (default 4)")
    ln.add_argument("--max-calls", type=int, default=64, help="most Hub calls to spend (default 64)")
    _add_hub(ln)
    _add_common(ln)

    rp = sub.add_parser("reproduce", help="merge again from the recipe in a model's card (hubmerge or mergekit)")
    rp.add_argument("repo", help="Hub repo id (org/name[@revision]) or a local folder holding the card")
    rp.add_argument("-o", "--output", default=None, help="output folder (default: ./<model name>)")
    rp.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    rp.add_argument("--max-shard-size", default=None, help="bytes per output shard (default 5GB)")
    rp.add_argument("--overwrite", action="store_true", help="replace the output folder if it exists")
    _add_hub(rp)
    _add_pickle(rp)
    _add_common(rp)

    vf = sub.add_parser("verify", help="re-merge from a hubmerge card and compare with its recorded content hash "
                                       "(exit 0 verified, 1 different)")
    vf.add_argument("repo", help="Hub repo id (org/name[@revision]) or a local folder holding the card")
    vf.add_argument("--device", default=None, help="cpu or cuda (default: the device class the card records)")
    _add_hub(vf)
    _add_pickle(vf)
    _add_common(vf)

    cd = sub.add_parser("card", help="regenerate the model card without merging")
    cd.add_argument("target", help="a spec file (card without content hash) or a merge output folder "
                                   "(its README.md is rewritten, the content hash recomputed from its tensors)")
    cd.add_argument("-o", "--output", default=None,
                    help="write the card to this file ('-' for stdout; default: the folder's README.md, or stdout "
                         "for a spec)")
    cd.add_argument("--title", default=None, help="title of the card (default: the folder or target name)")
    cd.add_argument("--repo", default=None, help="the Hub repo id the card names (default: hubmerge.target)")
    _add_hub(cd)
    _add_common(cd)

    ev = sub.add_parser("evolve", help="search a spec's {search: [low, high]} values (Optuna), merge the best")
    ev.add_argument("spec", help="spec file with search ranges, e.g. 'weight: {search: [0.0, 1.0]}'")
    ev.add_argument("--eval", action="append", required=True, dest="evals", metavar="EVAL",
                    help="ppl:FILE.txt, jsonl:FILE.jsonl or MODULE:FUNCTION (imported); repeat for several objectives")
    ev.add_argument("--trials", type=int, required=True, help="complete trials the study should hold")
    ev.add_argument("--sampler", choices=("cmaes", "tpe", "random", "nsga2"), default=None,
                    help="default: cmaes for one objective, tpe for several")
    ev.add_argument("--storage", default=None,
                    help="Optuna storage URL (default: sqlite:///OUTPUT-study.db); rerun to resume, share to add workers")
    ev.add_argument("--study-name", default=None, help="default: evolve-<spec file name>")
    ev.add_argument("--objectives", nargs="+", default=None, metavar="min|max",
                    help="direction per --eval (default: min for ppl, max for jsonl and callables)")
    ev.add_argument("--anchors", type=int, default=None, metavar="K",
                    help="score candidates on K fixed random items per evaluation (with a confidence interval)")
    ev.add_argument("--final-top", type=int, default=3, metavar="M",
                    help="re-evaluate the best M candidates on every item at the end (default 3)")
    ev.add_argument("--seed", type=int, default=0, help="seeds the sampler and the anchor subset (default 0)")
    ev.add_argument("-o", "--output", default=None, help="folder for the best merge (default: evolved-<spec name>)")
    ev.add_argument("--best-spec", default=None, metavar="FILE",
                    help="where to write the spec with the best values (default: <spec name>.evolved.yml next to the "
                         "spec, so its relative model paths still resolve)")
    ev.add_argument("--push", action="store_true", help="push the best merge to the Hub (target as for push)")
    ev.add_argument("--repo", default=None, help="target repo id for --push (default: the spec's hubmerge.target)")
    ev.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    ev.add_argument("--eval-dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--in-memory-limit", default="4GB",
                    help="merge candidates in memory when their inputs fit in this many bytes, else stream (4GB)")
    _add_hub(ev)
    _add_common(ev)

    ea = sub.add_parser("eval", help="evaluate a model folder or Hub repo (perplexity, accuracy, or a callable)")
    ea.add_argument("target", help="a local model folder or a Hub repo id (org/name[@revision])")
    ea.add_argument("--eval", action="append", required=True, dest="evals", metavar="EVAL",
                    help="ppl:FILE.txt, jsonl:FILE.jsonl or MODULE:FUNCTION (imported); repeatable")
    ea.add_argument("--anchors", type=int, default=None, metavar="K", help="only K fixed random items per evaluation")
    ea.add_argument("--seed", type=int, default=0)
    ea.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    ea.add_argument("--eval-dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ea.add_argument("--batch-size", type=int, default=32)
    ea.add_argument("--json", action="store_true", help="print the results as JSON")
    _add_hub(ea)
    _add_common(ea)

    d = sub.add_parser("demo", help="build tiny models and merge them, offline")
    d.add_argument("-o", "--output", default="hubmerge-demo", help="demo folder (default: ./hubmerge-demo)")
    _add_common(d)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else (logging.WARNING if args.quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    if not args.debug:
        for noisy in ("httpx", "httpx2", "httpcore", "urllib3", "filelock", "huggingface_hub"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from hubmerge import commands

        name = args.command + (f"_{args.webhook_command}" if args.command == "webhook" else "")
        return getattr(commands, f"cmd_{name}")(args)
    except HubmergeError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
