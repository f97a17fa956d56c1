"""What a search leaves behind: the best spec with concrete values, a table of every trial (CSV and
Markdown), the fitness plot, the merged model, and a model-card section recording the search."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from hubmerge.evolve.estimators import Estimate
from hubmerge.evolve.plot import render_png
from hubmerge.evolve.search import SearchResult
from hubmerge.spec.model import SearchChoice, SearchRange
from hubmerge.spec.parse import spec_from_dict
from hubmerge.spec.yamlio import dump_yaml

logger = logging.getLogger(__name__)

SPEC_FILE = "evolved.yml"
CSV_FILE = "evolve_trials.csv"
MD_FILE = "evolve_trials.md"
PLOT_FILE = "evolve_fitness.png"
CARD_TRIAL_ROWS = 50  # trials shown in the card itself (the files hold them all)
SAMPLER_NAMES = {"cmaes": "CMA-ES", "tpe": "TPE", "random": "random", "nsga2": "NSGA-II"}


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def table_rows(result: SearchResult) -> tuple[list[str], list[list[Any]]]:
    header = ["trial", "state"] + [p.path for p in result.params]
    for ev in result.evaluations:
        header += [ev.label, f"{ev.label} ci_low", f"{ev.label} ci_high", f"{ev.label} items", f"{ev.label} full"]
    header += ["seconds", "error"]
    rows = []
    for t in result.trials:
        row: list[Any] = [t.number, t.state] + [t.values.get(p.path) for p in result.params]
        for i in range(len(result.evaluations)):
            est = t.fitness[i] if i < len(t.fitness) else None
            full = t.full[i] if t.full is not None and i < len(t.full) else None
            row += [est.value if est else None, est.low if est else None, est.high if est else None,
                    est.n if est else None, full.value if full else None]
        row += [round(t.seconds, 3) if t.seconds is not None else None, t.error]
        rows.append(row)
    return header, rows


def trials_csv(result: SearchResult) -> str:
    header, rows = table_rows(result)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_fmt(v) for v in row])
    return buf.getvalue()


def trials_markdown(result: SearchResult, limit: int | None = None) -> str:
    """The trials as a Markdown table, in trial order, the best marked; ``limit``: only the first rows."""
    header, rows = table_rows(result)
    keep = [i for i, h in enumerate(header) if h != "error" or any(r[i] for r in rows)]
    lines = ["| " + " | ".join(header[i] for i in keep) + " |", "|" + "---|" * len(keep)]
    for row in rows[:limit]:
        marker = " **(best)**" if row[0] == result.best.number else ""
        cells = [_fmt(row[i]).replace("|", "\\|") for i in keep]
        cells[0] += marker
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _objective_text(result: SearchResult) -> str:
    parts = []
    for ev, d in zip(result.evaluations, result.directions):
        parts.append(f"{d} {ev.metric} of `{ev.spec}`")
    return "; ".join(parts)


def card_markdown(result: SearchResult) -> str:
    best = result.best
    sampler = SAMPLER_NAMES.get(result.sampler, result.sampler)
    lines = ["## Parameter search", "",
             f"The values below were found by `hubmerge evolve`: {len(result.complete)} complete trials "
             f"({len(result.trials)} in all) with Optuna's {sampler} sampler, study `{result.study_name}`.",
             f"Objective: {_objective_text(result)}."]
    if result.anchors:
        lines.append(f"Each candidate was scored on {result.anchors} fixed anchor items per evaluation (seed "
                     f"{result.seed}); the best {result.final_top} were then evaluated on every item.")
    lines += ["", f"Best: trial {best.number}."]
    for ev, est, full in zip(result.evaluations, best.fitness, best.full or [None] * len(best.fitness)):
        text = f"- {ev.label}: {est.describe()}"
        if full is not None:
            text += f"; on all {full.total} items: {full.value:.4g}"
        lines.append(text)
    lines += ["", "| searched value | range | best |", "|---|---|---|"]
    for p in result.params:
        lines.append(f"| `{p.path}` | {_space_text(p.range)} | {_fmt(best.values.get(p.path))} |")
    finalists = [t for t in result.trials if t.full is not None]
    if finalists:
        lines += ["", "Estimated vs full (the finalists, each also evaluated on every item):", "",
                  "| trial | evaluation | estimate | full | error |", "|---|---|---|---|---|"]
        for t in finalists:
            for ev, est, full in zip(result.evaluations, t.fitness, t.full):
                lines.append(f"| {t.number} | {ev.label} | {est.describe()} | {full.value:.4g} | "
                             f"{est.value - full.value:+.3g} |")
    lines += ["", f"![fitness over trials]({PLOT_FILE})", "",
              f"Fitness of each trial as the search scored it (dots; grey marks: failed trials) and the best so far "
              f"(line), objective {result.evaluations[0].label}. The spec with these values: "
              f"[{SPEC_FILE}]({SPEC_FILE}).", "", "### Trials", ""]
    shown = f"the first {CARD_TRIAL_ROWS} of {len(result.trials)} trials; all" if len(
        result.trials) > CARD_TRIAL_ROWS else "also"
    lines += [trials_markdown(result, CARD_TRIAL_ROWS).rstrip("\n"), "",
              f"({shown} in [{MD_FILE}]({MD_FILE}) and [{CSV_FILE}]({CSV_FILE}).)"]
    return "\n".join(lines)


def _space_text(r: SearchRange | SearchChoice) -> str:
    if isinstance(r, SearchChoice):
        return "one of " + ", ".join(_fmt(o) for o in r.options)
    extra = f", step {r.step:g}" if r.step else (", log" if r.log else "")
    return f"[{r.low:g}, {r.high:g}]{extra}"


def card_metadata(result: SearchResult) -> dict[str, Any]:
    best = result.best
    return {"search": {
        "tool": "hubmerge evolve",
        "trials": len(result.trials),
        "complete": len(result.complete),
        "sampler": result.sampler,
        "study": result.study_name,
        "objectives": [{"eval": ev.spec, "metric": ev.metric, "direction": d}
                       for ev, d in zip(result.evaluations, result.directions)],
        "anchors": result.anchors,
        "best": {"trial": best.number, "values": dict(best.values),
                 "fitness": [_est(e) for e in best.fitness],
                 **({"full": [_est(e) for e in best.full]} if best.full is not None else {})},
    }}


def _est(e: Estimate) -> dict[str, Any]:
    return {k: v for k, v in e.to_json().items() if v is not None}


def extra_files(result: SearchResult) -> dict[str, bytes]:
    """The search's files, to sit beside the merged model (and be pushed with it)."""
    values = [t.fitness[0].value if t.state == "COMPLETE" and t.fitness else None for t in result.trials]
    return {SPEC_FILE: dump_yaml(result.best_document).encode(), CSV_FILE: trials_csv(result).encode(),
            MD_FILE: trials_markdown(result).encode(), PLOT_FILE: render_png(values, result.directions[0])}


def best_spec(result: SearchResult):
    return spec_from_dict(result.best_document, source=f"trial {result.best.number}")


def add_to_card(folder: Path, markdown: str, metadata: dict[str, Any]) -> None:
    """Put a section into a written card, inside hubmerge's delimited section (so a later push replaces it
    with the rest), and keys under its ``hubmerge:`` metadata."""
    from hubmerge.output.card import END
    from hubmerge.spec.frontmatter import front_matter, split_front_matter

    path = folder / "README.md"
    meta, body = split_front_matter(path.read_text(encoding="utf-8"))
    block = meta.get("hubmerge")
    meta["hubmerge"] = {**(block if isinstance(block, dict) else {}), **metadata}
    body = body.replace(END, markdown.rstrip() + "\n\n" + END, 1) if END in body else body.rstrip() + "\n\n" + markdown
    path.write_text(front_matter(meta) + (body if body.startswith("\n") else "\n" + body), encoding="utf-8")


def decorator(result: SearchResult):
    """A callable (folder) -> None that adds the search's files and card section to a merged folder."""
    files = extra_files(result)
    markdown, metadata = card_markdown(result), card_metadata(result)

    def decorate(folder: Path) -> None:
        for name, data in files.items():
            (folder / name).write_bytes(data)
        if (folder / "README.md").is_file():
            add_to_card(folder, markdown, metadata)

    return decorate


def write_outputs(result: SearchResult, out_dir: Path, *, device: str = "cpu", base_dir: Path | None = None,
                  hub: Any = None, show_progress: bool = True):
    """Merge the best candidate into ``out_dir`` (atomically, like ``hubmerge merge``) with its card and the
    search's files. A folder left by an earlier evolve run is replaced; any other existing folder is refused."""
    from hubmerge.pipeline.card import write_card
    from hubmerge.pipeline.run import MergeOptions, run_merge

    out_dir = Path(out_dir)
    decorate = decorator(result)

    def card_writer(plan, digest, folder: Path) -> None:
        write_card(plan, digest, folder, title=out_dir.name, device=device)
        decorate(folder)

    options = MergeOptions(device=device, base_dir=base_dir, show_progress=show_progress,
                           overwrite=(out_dir / CSV_FILE).is_file())
    return run_merge(best_spec(result), out_dir, options, hub=hub, card_writer=card_writer)


def push_best(result: SearchResult, *, hub: Any, repo_id: str | None = None, device: str = "cpu",
              base_dir: Path | None = None, show_progress: bool = True, **push_kwargs):
    """Push the best merge like any other; its card records the search and carries its files."""
    from hubmerge.pipeline.push import push

    message = (f"hubmerge evolve: best of {len(result.complete)} trials "
               f"({SAMPLER_NAMES.get(result.sampler, result.sampler)})")
    return push(best_spec(result), hub=hub, repo_id=repo_id, device=device, base_dir=base_dir,
                show_progress=show_progress, commit_message=message, decorate=decorator(result),
                **push_kwargs)
