"""``hubmerge evolve``: a black-box search over a spec's search ranges, driven by Optuna.

- The study lives in Optuna's own storage (SQLite by default), created with ``load_if_exists=True``: the
  same command resumes an interrupted search, and several workers may share one study (each stops when
  the study holds ``trials`` complete trials). Heartbeats mark trials of a killed worker as failed after a
  grace period (a dead worker's trial never blocks the study).
- Samplers: CMA-ES (default for one objective), TPE (default for several), random, NSGA-II.
- Each candidate is merged (in memory for small models, see ``candidate``) and scored by every
  evaluation, on a fixed seeded subset of ``anchors`` items when asked (cheap, with a confidence
  interval); the best ``final_top`` candidates are then evaluated on all items and the best of those wins.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from hubmerge.errors import HubmergeError
from hubmerge.evolve.candidate import DEFAULT_CACHE_LIMIT, CandidateMerger
from hubmerge.evolve.errors import EvolveError
from hubmerge.evolve.estimators import Estimate, anchor_indices, ratio_estimate
from hubmerge.evolve.evaluate import Evaluation, JsonlOptions, parse_directions, parse_eval
from hubmerge.evolve.fitness import RESPONSES, IrtFitness, check_irt_options, encode_rows
from hubmerge.spec.model import MergeSpec, SearchChoice
from hubmerge.spec.search import SearchParam, spec_search_ranges, substitute
from hubmerge.spec.validate import method_for

logger = logging.getLogger(__name__)

SAMPLERS = ("cmaes", "tpe", "random", "nsga2")
MAX_CONSECUTIVE_FAILURES = 5
ATTR = "hubmerge"  # the user attribute holding our per-trial record / the study's search description


@dataclass
class EvolveOptions:
    evals: Sequence[str]
    trials: int = 20  # complete trials the study should hold (a resumed run continues up to it)
    sampler: str | None = None  # None: cmaes for one objective, tpe for several
    storage: str | None = None  # an Optuna storage URL; None: an in-memory study (no resume)
    study_name: str | None = None
    objectives: Sequence[str] | None = None  # min/max per eval, overriding each eval's natural direction
    anchors: int | None = None  # evaluate each candidate on this many fixed random items per eval
    final_top: int = 3  # candidates re-evaluated on every item at the end
    seed: int = 0
    device: str = "cpu"
    eval_dtype: str = "float32"
    batch_size: int = 32
    confidence: float = 0.95
    base_dir: Path | None = None
    cache_limit: int = DEFAULT_CACHE_LIMIT
    heartbeat: int | None = 15  # seconds; SQLite/RDB storages only
    jsonl: JsonlOptions = field(default_factory=JsonlOptions)  # prompting and scoring of jsonl: items
    estimator: str = "mean"  # mean | irt | gpirt (accuracy evaluations; see hubmerge.evolve.irt)
    anchor_selection: str = "random"  # random | stratified (by the IRT difficulty fitted on the parents)
    irt_warmup: int = 4  # with an IRT estimator: the first candidates scored on every item (fit data)


@dataclass
class TrialRecord:
    number: int
    state: str
    values: dict[str, Any]
    fitness: list[Estimate] = field(default_factory=list)
    full: list[Estimate] | None = None
    error: str | None = None
    seconds: float | None = None

    @property
    def final(self) -> list[Estimate]:
        return self.full if self.full is not None else self.fitness


@dataclass
class SearchResult:
    spec: MergeSpec
    params: list[SearchParam]
    evaluations: list[Evaluation]
    directions: list[str]
    sampler: str
    study_name: str
    storage: str | None
    trials: list[TrialRecord]
    best: TrialRecord
    anchors: int | None
    final_top: int
    seed: int

    @property
    def best_document(self) -> dict[str, Any]:
        return substitute(self.spec.raw, self.best.values)

    @property
    def complete(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.state == "COMPLETE"]


def round_value(value: float, step: float | None = None) -> float:
    """A value as written to the spec: 6 significant digits, or (on a step grid) without float noise."""
    return float(f"{value:.10g}") if step is not None else float(f"{value:.6g}")


def _param_types(spec: MergeSpec, params: list[SearchParam]) -> dict[str, type]:
    method = method_for(spec)
    out = {}
    for p in params:
        param = method.param(p.parameter)
        out[p.path] = param.type if param is not None else (str if p.parameter == "merge_method" else float)
    return out


def _suggest(trial, p: SearchParam, kind: type) -> Any:
    r = p.range
    if isinstance(r, SearchChoice):  # Optuna's categorical distribution (each option as written in the spec)
        return trial.suggest_categorical(p.path, list(r.options))
    if kind is int:
        step = int(r.step) if r.step else 1
        return trial.suggest_int(p.path, math.ceil(r.low), math.floor(r.high), step=step, log=r.log)
    value = trial.suggest_float(p.path, r.low, r.high, step=r.step, log=r.log)
    return round_value(value, r.step)


def sampler_name(name: str | None, objectives: int) -> str:
    """The sampler to use (the default for the number of objectives), refused if it cannot serve them."""
    if name is None:
        name = "cmaes" if objectives == 1 else "tpe"
    if name not in SAMPLERS:
        raise EvolveError(f"unknown sampler {name!r}", hint="use one of " + ", ".join(SAMPLERS))
    if name == "cmaes" and objectives > 1:
        raise EvolveError("CMA-ES optimises a single objective", hint="use --sampler tpe or nsga2 with several")
    return name


def make_sampler(name: str, *, seed: int, trials: int):
    """A sampler named by ``sampler_name``."""
    import optuna

    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(
            seed=seed, warn_independent_sampling=False,
            independent_sampler=optuna.samplers.TPESampler(seed=seed))  # used when only one value is searched
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, max(3, trials // 3)))
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def worker_seeded(make: Callable[[int], Any], seed: int):
    """A sampler seeded by ``seed`` plus the number of the first trial it samples.

    Trial numbers are unique across the workers sharing a study, so workers started together draw
    different candidates (with one seed for all they would draw the same ones, and the second worker
    would add nothing); a single worker stays reproducible, and a resumed search continues with a new
    stream rather than repeating the first run's candidates."""
    import optuna

    class WorkerSeeded(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self._inner = None

        def before_trial(self, study, trial) -> None:
            if self._inner is None:
                self._inner = make(seed + trial.number)
            self._inner.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self._inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self._inner.after_trial(study, trial, state, values)

    return WorkerSeeded()


def _storage(url: str | None, heartbeat: int | None):
    """An RDB storage with heartbeats (a killed worker's trial is marked failed after the grace period),
    or the URL as given for other storages; None keeps the study in memory."""
    import optuna

    if url is None or not url.startswith(("sqlite:", "postgresql", "mysql")) or not heartbeat:
        return url
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=4 * heartbeat)
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy/Optuna errors: say which storage
            # Workers started together race to create the schema: the loser sees a unique-constraint or
            # "database is locked" error, and the schema is there when it tries again.
            if attempt + 1 < STORAGE_ATTEMPTS and type(exc).__name__ in ("IntegrityError", "OperationalError"):
                time.sleep(0.2 * (attempt + 1))
                continue
            raise EvolveError(f"cannot open the study storage {url}: {exc}",
                              hint="pass --storage sqlite:///PATH.db with a writable folder") from None


STORAGE_ATTEMPTS = 5


def _description(params, evals, directions, anchors, seed) -> dict[str, Any]:
    return {"space": [[p.path, "choice", list(p.range.options)] if isinstance(p.range, SearchChoice)
                      else [p.path, p.range.low, p.range.high, p.range.step, p.range.log] for p in params],
            "evals": [e.identity for e in evals], "directions": directions, "anchors": anchors, "anchor_seed": seed}


def _estimates(data: Sequence[dict]) -> list[Estimate]:
    return [Estimate(d["value"], d.get("ci_low"), d.get("ci_high"), d.get("n", 0), d.get("total", 0),
                     d.get("confidence", 0.95)) for d in data]


def _record(trial) -> TrialRecord:
    attrs = trial.user_attrs.get(ATTR) or {}
    values = attrs.get("values") or dict(trial.params)
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() \
        if trial.datetime_complete and trial.datetime_start else None
    return TrialRecord(trial.number, trial.state.name, values, _estimates(attrs.get("fitness") or []), None,
                       attrs.get("error"), seconds)


def _rank(records: list[TrialRecord], directions: list[str], key) -> list[TrialRecord]:
    """Best first. One objective: by its value. Several: by distance to the ideal point after scaling each
    objective to [0, 1] over these records (Pareto-optimal records come first)."""
    if not records:
        return []
    if len(directions) == 1:
        sign = 1.0 if directions[0] == "minimize" else -1.0
        return sorted(records, key=lambda r: (sign * key(r)[0].value, r.number))
    cols = list(zip(*[[e.value for e in key(r)] for r in records]))
    spans = [(min(c), max(c)) for c in cols]

    def badness(r: TrialRecord) -> float:
        total = 0.0
        for (lo, hi), d, e in zip(spans, directions, key(r)):
            x = (e.value - lo) / (hi - lo) if hi > lo else 0.0
            total += (x if d == "minimize" else 1.0 - x) ** 2
        return math.sqrt(total)

    def dominated(r: TrialRecord) -> bool:
        mine = [e.value if d == "minimize" else -e.value for e, d in zip(key(r), directions)]
        for o in records:
            if o is r:
                continue
            theirs = [e.value if d == "minimize" else -e.value for e, d in zip(key(o), directions)]
            if all(t <= m for t, m in zip(theirs, mine)) and any(t < m for t, m in zip(theirs, mine)):
                return True
        return False

    return sorted(records, key=lambda r: (dominated(r), badness(r), r.number))


def evaluate_all(holder, evals: Sequence[Evaluation], indices: Sequence[Sequence[int] | None], options) -> list[Estimate]:
    return [ev.evaluate(holder, idx, batch_size=options.batch_size, confidence=options.confidence)
            for ev, idx in zip(evals, indices)]


def run_search(spec: MergeSpec, options: EvolveOptions, *, hub: Any = None) -> SearchResult:
    import optuna

    params = spec_search_ranges(spec)
    if not params:
        raise EvolveError("the spec has no search ranges: nothing to search",
                          hint="write a value as {search: [low, high]}, e.g. 'weight: {search: [0.0, 1.0]}', "
                               "or {choice: [a, b]}")
    if not options.evals:
        raise EvolveError("no evaluation given", hint="pass --eval ppl:FILE.txt, jsonl:FILE.jsonl or MODULE:FUNCTION")
    if options.trials < 1:
        raise EvolveError("--trials must be at least 1")
    kinds = _param_types(spec, params)
    evals = [parse_eval(e, base_dir=options.base_dir, jsonl=options.jsonl) for e in options.evals]
    directions = parse_directions(evals, options.objectives)
    if options.anchors is not None and options.anchors < 2:
        raise EvolveError("--anchors must be at least 2 (an interval needs two items)")
    irt_evals = check_irt_options(spec, evals, estimator=options.estimator, selection=options.anchor_selection,
                                  anchors=options.anchors)
    anchors = [anchor_indices(len(e), options.anchors, options.seed) if e.has_items else None for e in evals]
    subset = any(a is not None and len(a) < len(e) for a, e in zip(anchors, evals))

    storage = _storage(options.storage, options.heartbeat)
    study_name = options.study_name or f"hubmerge-evolve-{spec.merge_method}"
    description = _description(params, evals, directions, options.anchors, options.seed)
    if irt_evals:  # recorded only when used, so studies made before these options still resume
        description.update(estimator=options.estimator, anchor_selection=options.anchor_selection,
                           irt_warmup=options.irt_warmup if options.estimator != "mean" else 0)
    optuna_level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            chosen = sampler_name(options.sampler, len(directions))
            sampler = worker_seeded(lambda seed: make_sampler(chosen, seed=seed, trials=options.trials), options.seed)
            try:
                study = optuna.create_study(storage=storage, study_name=study_name, sampler=sampler,
                                            directions=directions, load_if_exists=True)
            except ValueError as exc:  # e.g. the stored study has other directions
                raise EvolveError(f"study {study_name!r}: {exc}", hint="use another --study-name") from None
            recorded = study.user_attrs.get(ATTR)
            if recorded is None:
                study.set_user_attr(ATTR, description)
            elif json.loads(json.dumps(recorded)) != json.loads(json.dumps(description)):
                raise EvolveError(f"study {study_name!r} in {options.storage} was made for another search "
                                  f"(search space, evaluations or anchors differ)",
                                  hint="use another --study-name or --storage, or the same spec and options")
            if isinstance(storage, optuna.storages.RDBStorage) and options.heartbeat:
                optuna.storages.fail_stale_trials(study)
            irt = None
            if irt_evals:
                irt = IrtFitness(evals, irt_evals, options.estimator, options.irt_warmup, options.confidence)
                irt.parents(study, spec, options, hub=hub)
                if options.anchor_selection == "stratified":
                    drawn = irt.stratified(options.seed, options.anchors)
                    anchors = [drawn.get(i, a) for i, a in enumerate(anchors)]
            with CandidateMerger(spec, base_dir=options.base_dir, hub=hub, device=options.device,
                                 eval_dtype=options.eval_dtype, cache_limit=options.cache_limit) as merger:
                _optimize(study, merger, params, kinds, evals, anchors, options,
                          irt if options.estimator != "mean" else None)
                records = [_record(t) for t in study.get_trials(deepcopy=False)]
                complete = [r for r in records if r.state == "COMPLETE" and len(r.fitness) == len(evals)]
                if not complete:
                    raise EvolveError("no trial completed", hint="see the errors above; every candidate failed")
                finalists = _rank(complete, directions, lambda r: r.fitness)[:max(1, options.final_top)]
                if subset:
                    _full_evaluations(study, merger, finalists, evals, options)
                    best = _rank(finalists, directions, lambda r: r.final)[0]
                else:
                    best = finalists[0]
    finally:
        optuna.logging.set_verbosity(optuna_level)
    logger.info("best: trial %d %s -> %s", best.number, best.values,
                "; ".join(f"{e.label} {est.describe()}" for e, est in zip(evals, best.final)))
    return SearchResult(spec, params, evals, directions, chosen, study_name, options.storage, records, best,
                        options.anchors, options.final_top, options.seed)


def _irt_evaluate(study, holder, evals, anchors, options: EvolveOptions, irt: IrtFitness
                  ) -> tuple[list[Estimate], dict[str, str] | None]:
    """Estimates for one candidate with an IRT estimator, and its full response rows when it is one of the
    first ``irt_warmup`` candidates (scored on every item; those rows join the IRT fit)."""
    from optuna.trial import TrialState

    full = irt.refresh(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < options.irt_warmup
    out, rows = [], {}
    for i, (ev, idx) in enumerate(zip(evals, anchors)):
        if i not in irt.which:
            out.append(ev.evaluate(holder, idx, batch_size=options.batch_size, confidence=options.confidence))
        elif full:
            scores = ev.item_scores(holder, batch_size=options.batch_size)
            rows[str(i)] = encode_rows(scores)
            out.append(ratio_estimate(scores, [1.0] * len(scores), total=len(scores), confidence=options.confidence))
        else:
            scores = ev.item_scores(holder, idx, batch_size=options.batch_size)
            out.append(irt.estimate(i, list(idx), scores))
    return out, (rows if full else None)


def _optimize(study, merger: CandidateMerger, params, kinds, evals, anchors, options: EvolveOptions,
              irt: IrtFitness | None = None) -> None:
    from optuna.trial import TrialState

    failures: list[str] = []

    def objective(trial):
        start = time.perf_counter()
        values = {p.path: _suggest(trial, p, kinds[p.path]) for p in params}
        rows = None
        try:
            holder = merger.load(values)
            if irt is None:
                estimates = evaluate_all(holder, evals, anchors, options)
            else:
                estimates, rows = _irt_evaluate(study, holder, evals, anchors, options, irt)
        except HubmergeError as exc:
            trial.set_user_attr(ATTR, {"values": values, "error": exc.message})
            failures.append(exc.message)
            logger.warning("trial %d %s failed: %s", trial.number, values, exc.message)
            raise
        failures.clear()
        record = {"values": values, "fitness": [e.to_json() for e in estimates]}
        if rows is not None:
            record[RESPONSES] = rows
        trial.set_user_attr(ATTR, record)
        logger.info("trial %d %s -> %s (%.1f s)", trial.number, _short(values),
                    "; ".join(f"{ev.label} {est.describe()}" for ev, est in zip(evals, estimates)),
                    time.perf_counter() - start)
        values_out = [e.value for e in estimates]
        return values_out[0] if len(values_out) == 1 else tuple(values_out)

    while True:
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        if done >= options.trials:
            logger.info("the study holds %d complete trial(s) (target %d)", done, options.trials)
            return
        if len(failures) >= MAX_CONSECUTIVE_FAILURES:
            raise EvolveError(f"{len(failures)} candidates in a row failed; the last: {failures[-1]}",
                              hint="narrow the search ranges or fix the evaluation")
        study.optimize(objective, n_trials=1, catch=(HubmergeError,), gc_after_trial=False,
                       show_progress_bar=False)


def _short(values: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()) + "}"


def _full_evaluations(study, merger, finalists: list[TrialRecord], evals, options) -> None:
    """Every finalist on all items; results kept in the study so a rerun or another worker reuses them."""
    for record in finalists:
        key = f"{ATTR}:full:{record.number}"
        stored = study.user_attrs.get(key)
        if stored is not None and len(stored) == len(evals):
            record.full = _estimates(stored)
            continue
        holder = merger.load(record.values)
        record.full = evaluate_all(holder, evals, [None] * len(evals), options)
        study.set_user_attr(key, [e.to_json() for e in record.full])
        logger.info("trial %d on every item: %s", record.number,
                    "; ".join(f"{ev.label} {est.describe()}" for ev, est in zip(evals, record.full)))
