"""``hubmerge check``, ``sync`` and ``webhook serve``: keeping merged repos fresh with their upstreams."""

from __future__ import annotations

import json
import logging

from hubmerge.commands import ci_outputs
from hubmerge.commands.common import hub_of

logger = logging.getLogger("hubmerge")


def cmd_check(args) -> int:
    from hubmerge.hub.watch import EXIT_STALE, EXIT_UP_TO_DATE, check, render_table

    report = check(hub_of(args), args.target)
    ci_outputs.after_check(report, endpoint=args.endpoint)  # $GITHUB_OUTPUT / $GITHUB_STEP_SUMMARY
    print(json.dumps(report.to_json(), indent=2) if args.json else render_table(report))
    return EXIT_STALE if report.stale else EXIT_UP_TO_DATE


def cmd_sync(args) -> int:
    from hubmerge.hub.watch import render_table
    from hubmerge.pipeline.sync import sync

    def show(report):  # before the re-merge: the table says what is about to be done, not what was
        print(render_table(report), flush=True)

    report, result = sync(hub_of(args), args.target, create_pr=args.create_pr, device=args.device,
                          show_progress=not args.quiet, on_report=show)
    ci_outputs.after_sync(report, result, endpoint=args.endpoint)  # $GITHUB_OUTPUT / $GITHUB_STEP_SUMMARY
    if result is None:
        print(f"{args.target} is up to date; nothing to do")
    elif not result.changed:
        print(f"{args.target}: the re-merge gave identical weights; no commit made")
    else:
        moved = ", ".join(f"{s.source} {s.recorded[:12]} -> {s.current[:12]}" for s in report.sources if s.changed)
        print(f"re-merged {args.target} ({moved}) and pushed: {result.pr_url or result.commit_url}")
    return 0


def cmd_webhook_serve(args) -> int:
    import os

    from hubmerge.errors import HubmergeError
    from hubmerge.hub.recipes import recorded_recipe
    from hubmerge.hub.watch import tracked_refs
    from hubmerge.hub.webhook import WebhookReceiver, github_dispatch, make_server
    from hubmerge.pipeline.sync import sync

    secret = os.environ.get(args.secret_env)
    if not secret:
        raise HubmergeError(f"no webhook secret: set the {args.secret_env} environment variable",
                            hint="use the same secret as in the Hub webhook settings")
    hub = hub_of(args)

    def targets() -> dict[str, dict[str, str]]:
        out = {}
        for target in args.targets:
            try:
                out[target] = tracked_refs(recorded_recipe(hub, target)[1])
            except HubmergeError as exc:
                logger.warning("cannot read %s: %s", target, exc)
        return out

    if args.dispatch:
        token = os.environ.get("GITHUB_TOKEN")
        if not token:
            raise HubmergeError("--dispatch needs a GitHub token in GITHUB_TOKEN")
        trigger = github_dispatch(args.dispatch, token, api_url=args.github_api)
    else:
        def trigger(target, events):
            sync(hub, target, create_pr=args.create_pr, show_progress=False)

    receiver = WebhookReceiver(secret, targets, trigger, debounce=args.debounce)
    server = make_server(receiver, args.host, args.port)
    logger.info("listening for Hub webhooks on http://%s:%d (%d targets)", args.host, server.server_port,
                len(args.targets))
    try:
        server.serve_forever()
    finally:
        receiver.flush()
        server.server_close()
    return 0

