"""The command line: argument parsing and error printing, nothing else."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import traceback

from hubmerge import __version__
from hubmerge.errors import HubmergeError

logger = logging.getLogger("hubmerge")


# Options several commands take, declared once: flags and argparse settings (a command may override some).
OPTIONS: dict[str, tuple[tuple[str, ...], dict]] = {
    "device": (("--device",), {"default": "cpu", "help": "cpu, cuda or auto (default: cpu)"}),
    "max_shard_size": (("--max-shard-size",),
                       {"default": None, "help": "bytes per output shard, e.g. 5GB, 500MB (default 5GB)"}),
    "overwrite": (("--overwrite",), {"action": "store_true", "help": "replace the output folder if it exists"}),
    "output": (("-o", "--output"), {"default": None, "help": "output folder"}),
    "repo": (("--repo",), {"default": None, "help": "target repo id (default: the spec's hubmerge.target)"}),
    "json": (("--json",), {"action": "store_true", "help": "print JSON instead of text"}),
    "evals": (("--eval",), {"action": "append", "required": True, "dest": "evals", "metavar": "EVAL",
                            "help": "ppl:FILE.txt, jsonl:FILE.jsonl or MODULE:FUNCTION (imported); repeatable"}),
    "seed": (("--seed",), {"type": int, "default": 0, "help": "seeds the anchor subset (default 0)"}),
    "eval_dtype": (("--eval-dtype",), {"default": "float32", "choices": ("float32", "bfloat16", "float16")}),
    "batch_size": (("--batch-size",), {"type": int, "default": 32}),
    "allow_pickle": (("--allow-pickle",), {
        "action": "store_true",
        "help": "read inputs that only have pytorch_model*.bin pickles (with torch.load(weights_only=True)); "
                "off by default because unpickling can run arbitrary code"}),
    "endpoint": (("--endpoint",), {"default": None, "help": "Hub endpoint (default: HF_ENDPOINT or huggingface.co)"}),
    "download": (("--download",), {"action": "store_true",
                                   "help": "download Hub inputs into the HF cache first instead of streaming them"}),
    "debug": (("--debug",), {"action": "store_true", "help": "show tracebacks and debug logs"}),
    "quiet": (("-q", "--quiet"), {"action": "store_true", "help": "no progress bars, warnings only"}),
}
JSONL = ("max_new_tokens", "answer_regex", "chat_template", "fewshot")
OPTIONS.update({
    "max_new_tokens": (("--max-new-tokens",), {"type": int, "default": None, "metavar": "N",
                                               "help": "jsonl prompt/answer items: score by greedy generation of up "
                                                       "to N tokens (batched)"}),
    "answer_regex": (("--answer-regex",), {"default": None, "metavar": "REGEX",
                                           "help": "jsonl generation: the answer is the last match (its first "
                                                   "group if any), e.g. '-?[0-9][0-9,.]*' for the last number"}),
    "chat_template": (("--chat-template",), {"action": "store_true",
                                             "help": "jsonl: wrap prompts (and shots) in the model's chat template"}),
    "fewshot": (("--fewshot",), {"type": int, "default": 0, "metavar": "K",
                                 "help": "jsonl: the first K items are examples before every prompt, not scored"}),
})
HUB = ("endpoint", "download")
COMMON = ("debug", "quiet")


def add(p: argparse.ArgumentParser, *names: str, **overrides) -> None:
    """Add the shared options ``names`` to a command; ``overrides`` change the settings of (the first) one."""
    for i, name in enumerate(names):
        flags, settings = OPTIONS[name]
        p.add_argument(*flags, **({**settings, **overrides} if i == 0 else settings))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hubmerge", description="Hub-native streaming model merging")
    parser.add_argument("--version", action="version", version=f"hubmerge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    m = sub.add_parser("merge", help="merge the models of a spec into a local folder")
    m.add_argument("spec", help="spec file (mergekit-compatible YAML; an MoE recipe runs as 'hubmerge moe')")
    add(m, "output", required=True)
    add(m, "device", "max_shard_size")
    m.add_argument("--resume", action="store_true", help="reuse fully written shards of an interrupted run")
    add(m, "overwrite", "allow_pickle", *HUB, *COMMON)

    mo = sub.add_parser("moe", help="build a mixture of experts from dense fine-tunes (a mergekit-moe recipe)")
    mo.add_argument("spec", metavar="RECIPE", help="MoE recipe (mergekit-moe YAML: base_model, experts, gate_mode)")
    add(mo, "output", required=True)
    add(mo, "device", help="where gate_mode hidden runs the base on the prompts: cpu, cuda or auto (default: cpu)")
    add(mo, "max_shard_size")
    mo.add_argument("--resume", action="store_true", help="reuse fully written shards of an interrupted run")
    add(mo, "overwrite", "allow_pickle", *HUB, *COMMON)

    p = sub.add_parser("push", help="merge and push the result to the Hub as one commit")
    p.add_argument("spec", help="spec file, or a Hub repo id whose README holds the recipe under 'hubmerge:'")
    add(p, "repo")
    p.add_argument("--private", action="store_true", default=None, help="create the repo private")
    p.add_argument("--create-pr", action="store_true", default=None, help="open a Hub pull request instead")
    p.add_argument("--message", default=None, help="commit message")
    add(p, "device", "max_shard_size")
    p.add_argument("--open-pr", action="store_true",
                   help="open a Hub pull request for a merge split into parts, print its number, merge nothing")
    p.add_argument("--part", default=None, metavar="I/N", help="merge only part I of N and commit it into --pr")
    p.add_argument("--pr", type=int, default=None, metavar="NUM", help="the pull request the parts go into")
    p.add_argument("--gate-eval", default=None, metavar="EVAL",
                   help="evaluate the merge before committing (ppl:FILE.txt or jsonl:FILE.jsonl) and refuse to push "
                        "one worse than --max-ppl-ratio times its best parent")
    p.add_argument("--max-ppl-ratio", type=float, default=1.5, help="allowed ratio for --gate-eval (default 1.5)")
    add(p, "allow_pickle", *HUB, *COMMON)

    pl = sub.add_parser("plan", help="split a merge's output shards into parts, balanced by bytes")
    pl.add_argument("spec")
    pl.add_argument("--parts", type=int, required=True)
    add(pl, "max_shard_size", "json", *HUB, *COMMON)

    f = sub.add_parser("finalize", help="check every part of a split merge and merge its pull request")
    f.add_argument("spec")
    f.add_argument("--pr", type=int, required=True, metavar="NUM")
    add(f, "repo", *HUB, *COMMON)

    c = sub.add_parser("check", help="has any tracked upstream of a merged repo moved? (exit 0 up to date, 10 stale)")
    c.add_argument("target", help="Hub repo id of a model pushed by hubmerge")
    add(c, "json", *HUB, *COMMON)

    y = sub.add_parser("sync", help="re-merge and push when a tracked upstream moved; otherwise do nothing")
    y.add_argument("target", help="Hub repo id of a model pushed by hubmerge")
    y.add_argument("--create-pr", action="store_true", help="put the re-merge up for review as a Hub pull request")
    add(y, "device", *HUB, *COMMON)

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
    add(ws, *HUB, *COMMON)

    v = sub.add_parser("validate", help="check a spec against its inputs' headers and print the plan")
    v.add_argument("spec")
    add(v, "max_shard_size", "json", "allow_pickle", *HUB, *COMMON)

    ln = sub.add_parser("lineage", help="print a model's family tree, read from its card and its parents' cards")
    ln.add_argument("repo", help="Hub repo id (org/name or org/name@revision) or a local model folder")
    ln.add_argument("--format", default="markdown", choices=["mermaid", "markdown", "json", "dot"],
                    help="output format (default: markdown)")
    ln.add_argument("--depth", type=int, default=4, help="generations to walk up (default 4)")
    ln.add_argument("--max-calls", type=int, default=64, help="most Hub calls to spend (default 64)")
    add(ln, *HUB, *COMMON)

    rp = sub.add_parser("reproduce", help="merge again from the recipe in a model's card (hubmerge or mergekit)")
    rp.add_argument("repo", help="Hub repo id (org/name[@revision]) or a local folder holding the card")
    add(rp, "output", help="output folder (default: ./<model name>)")
    add(rp, "device", "max_shard_size", "overwrite", *HUB, "allow_pickle", *COMMON)

    vf = sub.add_parser("verify", help="re-merge from a hubmerge card and compare with its recorded content hash "
                                       "(exit 0 verified, 1 different)")
    vf.add_argument("repo", help="Hub repo id (org/name[@revision]) or a local folder holding the card")
    add(vf, "device", default=None, help="cpu or cuda (default: the device class the card records)")
    add(vf, *HUB, "allow_pickle", *COMMON)

    cd = sub.add_parser("card", help="regenerate the model card without merging")
    cd.add_argument("target", help="a spec file (card without content hash) or a merge output folder "
                                   "(its README.md is rewritten, the content hash recomputed from its tensors)")
    add(cd, "output", help="write the card to this file ('-' for stdout; default: the folder's README.md, or stdout "
                           "for a spec)")
    cd.add_argument("--title", default=None, help="title of the card (default: the folder or target name)")
    add(cd, "repo", help="the Hub repo id the card names (default: hubmerge.target)")
    add(cd, *HUB, *COMMON)

    ev = sub.add_parser("evolve", help="search a spec's {search: [low, high]} values (Optuna), merge the best")
    ev.add_argument("spec", help="spec file with search ranges, e.g. 'weight: {search: [0.0, 1.0]}'")
    add(ev, "evals", help="ppl:FILE.txt, jsonl:FILE.jsonl or MODULE:FUNCTION (imported); repeat for several "
                          "objectives")
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
    ev.add_argument("--estimator", choices=("mean", "irt", "gpirt"), default="mean",
                    help="accuracy from the anchors: their mean, or a 2PL IRT model's p-IRT / gp-IRT estimate "
                         "(fitted on the parents and the first --irt-warmup candidates, all evaluated on every item)")
    ev.add_argument("--anchor-selection", choices=("random", "stratified"), default="random",
                    help="anchors drawn at random, or one per stratum of IRT difficulty fitted on the parents")
    ev.add_argument("--irt-warmup", type=int, default=4, metavar="N",
                    help="with --estimator irt|gpirt: the first N candidates are scored on every item (default 4)")
    ev.add_argument("--final-top", type=int, default=3, metavar="M",
                    help="re-evaluate the best M candidates on every item at the end (default 3)")
    add(ev, "seed", help="seeds the sampler and the anchor subset (default 0)")
    add(ev, "output", help="folder for the best merge (default: evolved-<spec name>)")
    ev.add_argument("--best-spec", default=None, metavar="FILE",
                    help="where to write the spec with the best values (default: <spec name>.evolved.yml next to the "
                         "spec, so its relative model paths still resolve)")
    ev.add_argument("--push", action="store_true", help="push the best merge to the Hub (target as for push)")
    add(ev, "repo", help="target repo id for --push (default: the spec's hubmerge.target)")
    add(ev, "device", "eval_dtype", "batch_size", *JSONL)
    ev.add_argument("--in-memory-limit", default="4GB",
                    help="merge candidates in memory when their inputs fit in this many bytes, else stream (4GB)")
    add(ev, *HUB, *COMMON)

    ea = sub.add_parser("eval", help="evaluate a model folder or Hub repo (perplexity, accuracy, or a callable)")
    ea.add_argument("target", help="a local model folder or a Hub repo id (org/name[@revision])")
    add(ea, "evals")
    ea.add_argument("--anchors", type=int, default=None, metavar="K", help="only K fixed random items per evaluation")
    add(ea, "seed", "device", "eval_dtype", "batch_size", *JSONL, "json", *HUB, *COMMON)

    _tool_parsers(sub)

    d = sub.add_parser("demo", help="build tiny models and merge them, offline")
    add(d, "output", default="hubmerge-demo", help="demo folder (default: ./hubmerge-demo)")
    add(d, *COMMON)
    return parser


def _tool_parsers(sub) -> None:
    """``extract-lora`` and ``tokensurgeon``: a recipe file, or the recipe's fields as options."""
    from hubmerge.spec.tools import APPROXIMATIONS, SUBWORD_METHODS

    e = sub.add_parser("extract-lora", help="extract a PEFT LoRA adapter (fine-tune minus base, truncated SVD)")
    e.add_argument("recipe", nargs="?", default=None, help="a recipe file ('extract_lora:' ...) instead of options")
    e.add_argument("--model", help="the fine-tune: org/name[@revision] or a local folder")
    e.add_argument("--base", "--base-model", dest="base", help="the model it was fine-tuned from")
    e.add_argument("--rank", "--max-rank", dest="rank", type=int, default=None,
                   help="the most a module keeps (default 128, as mergekit); a smaller matrix keeps its full rank")
    e.add_argument("--sv-epsilon", type=float, default=None,
                   help="keep only singular values above this (the rank is then chosen per module)")
    e.add_argument("--embed-lora", action="store_true", help="decompose embeddings and the output head too")
    e.add_argument("--save-module", action="append", dest="save_modules", metavar="NAME",
                   help="save this module in full (modules_to_save), e.g. lm_head; repeatable")
    e.add_argument("--include", "--include-regex", action="append", metavar="REGEX",
                   help="only modules whose name matches; repeatable")
    e.add_argument("--exclude", "--exclude-regex", action="append", metavar="REGEX",
                   help="leave out modules whose name matches; repeatable")
    e.add_argument("--no-distribute-scale", action="store_true",
                   help="put the singular values on A only (default: sqrt on both factors)")
    e.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="adapter dtype (default: the fine-tune's)")
    t = sub.add_parser("tokensurgeon", help="give a model another model's tokenizer, approximating new tokens")
    t.add_argument("recipe", nargs="?", default=None, help="a recipe file ('tokensurgeon:' ...) instead of options")
    t.add_argument("--model", help="the model whose weights are kept")
    t.add_argument("--donor", help="the model whose tokenizer it gets")
    t.add_argument("--method", "--approximation-method", "-a", choices=APPROXIMATIONS, default=None,
                   help="rows for tokens the model lacks (default omp, as mergekit)")
    t.add_argument("-k", "--k", type=int, default=None, help="shared tokens per new token for omp (default 64)")
    t.add_argument("--subword-method", choices=SUBWORD_METHODS, default=None, help="for --method subword")
    add(t, "max_shard_size")
    for p in (e, t):
        add(p, "output", required=True)
        add(p, "device", "overwrite", "allow_pickle", *HUB, *COMMON)


MAX_ERROR_LINE = 400  # characters; a 50 MB bad value must not be echoed whole


def error_text(text: str) -> str:
    """An error for the terminal: each line cut to ``MAX_ERROR_LINE`` characters, control characters shown
    escaped (a crafted name must not rewrite the terminal)."""
    lines = []
    for line in text.splitlines() or [""]:
        line = "".join(c if c.isprintable() or c == "\t" else repr(c)[1:-1] for c in line[:MAX_ERROR_LINE * 2])
        lines.append(line if len(line) <= MAX_ERROR_LINE else line[:MAX_ERROR_LINE] + " [...]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = getattr(args, "device", None)
    if device is not None and not re.fullmatch(r"cpu|auto|cuda(:[0-9]{1,2})?|mps", device):
        print(f"error: --device {error_text(repr(device[:40]))} is not a device", file=sys.stderr)
        print("  hint: use cpu, cuda, cuda:N or auto", file=sys.stderr)
        return 2
    level = logging.DEBUG if args.debug else (logging.WARNING if args.quiet else logging.INFO)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    if not args.debug:
        for noisy in ("httpx", "httpx2", "httpcore", "urllib3", "filelock", "huggingface_hub"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        from hubmerge import commands

        name = args.command.replace("-", "_") + (f"_{args.webhook_command}" if args.command == "webhook" else "")
        return getattr(commands, f"cmd_{name}")(args)
    except HubmergeError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {error_text(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder the user named cannot be used: one line, not a traceback
        if args.debug:
            traceback.print_exc()
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {error_text(where + (exc.strerror or type(exc).__name__))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
