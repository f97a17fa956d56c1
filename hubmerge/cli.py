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
    _add_hub(p)
    _add_common(p)

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
    _add_hub(v)
    _add_common(v)

    d = sub.add_parser("demo", help="build tiny models and merge them, offline")
    d.add_argument("-o", "--output", default="hubmerge-demo", help="demo folder (default: ./hubmerge-demo)")
    _add_common(d)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else (logging.WARNING if args.quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    if not args.debug:
        for noisy in ("httpx", "httpcore", "urllib3", "filelock", "huggingface_hub"):
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
