"""Multi-stage specs (mergekit-multi): several YAML documents in one file, each a merge with a ``name:``.

A later stage may use an earlier stage's output as a model by naming it (``model: stage-one``). Stages
are put in dependency order (file order among independent ones); exactly one stage, the one no other
stage uses, is the final merge whose output the command writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hubmerge.errors import SpecError
from hubmerge.spec.model import MergeSpec, ModelRef
from hubmerge.spec.moe import is_moe_spec
from hubmerge.spec.parse import read_spec_text, spec_from_dict
from hubmerge.spec.pin import map_model_refs
from hubmerge.spec.yamlio import load_yaml_documents


@dataclass(frozen=True)
class Stage:
    name: str
    spec: MergeSpec
    needs: tuple[str, ...]  # earlier stages whose outputs this stage merges


def stage_refs(doc: dict, names: set[str]) -> list[str]:
    """Names of stages that a spec document uses as models, in the order it names them."""
    found: list[str] = []

    def visit(ref: ModelRef) -> ModelRef:
        if ref.path in names and ref.revision is None and ref.path not in found:
            found.append(ref.path)
        return ref

    map_model_refs(doc, visit)
    return found


def parse_stages(text: str, *, source: str = "spec") -> list[Stage]:
    """Every stage of a spec text, in the order they must run; a single document is one stage."""
    docs = load_yaml_documents(text, source=source)
    if not docs:
        raise SpecError(f"{source}: the spec is empty", hint="start with 'merge_method: ...'")
    if len(docs) == 1:
        spec = spec_from_dict(docs[0], source=source)
        return [Stage(getattr(spec, "name", None) or "merge", spec, ())]  # a tool recipe has no stage name

    specs: dict[str, MergeSpec] = {}
    unnamed = 0
    for i, doc in enumerate(docs):
        where = f"{source}, document {i + 1}" + (f" ('{doc['name']}')" if isinstance(doc, dict) and doc.get("name") else "")
        try:
            spec = spec_from_dict(doc, source=where)
        except SpecError as exc:
            if exc.source is not None:  # it names its document already
                raise
            raise SpecError(f"{where}: {exc.message}", hint=exc.hint) from None
        if not isinstance(spec, MergeSpec) and not is_moe_spec(spec):  # an MoE may be the final stage
            raise SpecError(f"{where}: an {spec.tool} recipe cannot be a stage of a multi-stage merge",
                            hint="run it on its own file, then name its output folder as a model")
        if spec.name is None:  # as in mergekit-multi, the one unnamed document is the final merge
            unnamed += 1
        name = spec.name if spec.name is not None else UNNAMED
        if name in specs or unnamed > 1:
            raise SpecError(f"{where}: "
                            + (f"stage name '{name}' is used twice" if spec.name else "a second document without a name"),
                            path="name", hint="give every intermediate stage its own 'name:'; at most one (the "
                                              "final merge) may go without")
        specs[name] = spec
    needs = {name: tuple(stage_refs(spec.raw, set(specs) - {name, UNNAMED})) for name, spec in specs.items()}
    return [Stage(name, specs[name], needs[name]) for name in _ordered(list(specs), needs, source)]


UNNAMED = "(final)"


def _ordered(names: list[str], needs: dict[str, tuple[str, ...]], source: str) -> list[str]:
    """Dependency order, keeping file order where stages are independent; refuses cycles and two finals."""
    used = {n for deps in needs.values() for n in deps}
    finals = [n for n in names if n not in used]
    if len(finals) != 1:
        raise SpecError(f"{source}: {len(finals)} stages are not used by any other stage ({', '.join(finals) or 'none'}); "
                        "exactly one final stage is needed", path="name",
                        hint="use every intermediate stage as a model of a later stage, or split the file")
    done: list[str] = []
    pending = list(names)
    while pending:
        ready = next((n for n in pending if all(d in done for d in needs[n])), None)
        if ready is None:
            raise SpecError(f"{source}: stages depend on each other in a cycle: {', '.join(pending)}", path="name")
        done.append(ready)
        pending.remove(ready)
    return done


def load_stages(path: str | Path) -> list[Stage]:
    return parse_stages(read_spec_text(path), source=str(path))
