"""Multi-stage specs: several YAML documents in one file, each a merge with a ``name:`` (mergekit-multi) or an
``out_path:`` (the older mergekit-mega form of mergekit's ``examples/mega.yml``).

A later stage may use an earlier stage's output as a model by naming it (``model: stage-one``) or by the
``out_path`` it writes (``model: ./models/stage-one``; the spellings ``models/stage-one`` and
``./models/stage-one/`` name it too). Stages are put in dependency order (file order among independent ones);
exactly one stage, the one no other stage uses, is the final merge whose output the command writes.

An ``out_path`` is never written: it only names the stage. Intermediates go to the scratch folder under a stage
name made from the path's last part (``./models/gradient-slerp`` -> ``gradient-slerp``), the final merge to the
command's output folder.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubmerge.errors import SpecError
from hubmerge.spec.bounded import shorten
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
    label: str = ""  # how the file names the stage ("name: x" / "out_path: ./x"), for messages
    # How this stage's spec spells the stages it needs: reference key (``reference_key``) -> stage name.
    aliases: dict[str, str] = field(default_factory=dict, compare=False)

    def stage_of(self, ref: ModelRef) -> str | None:
        """The earlier stage a model reference of this stage names, or None for an ordinary model."""
        if ref.revision is not None:
            return None
        name = self.aliases.get(reference_key(ref.path))
        return name if name in self.needs else None


def reference_key(path: str) -> str:
    """The form in which a model reference is matched against stage names and out_paths: ``./a/b/``, ``a/b``
    and ``a//b`` are one path."""
    text = path.strip().replace("\\", "/")
    return posixpath.normpath(text) if text else text


def stage_refs(doc: dict, names: set[str] | dict[str, str]) -> list[str]:
    """Names of stages that a spec document uses as models, in the order it names them. ``names`` maps each
    reference key to its stage (a set: stage names that are their own keys)."""
    keys = names if isinstance(names, dict) else {reference_key(n): n for n in names}
    found: list[str] = []

    def visit(ref: ModelRef) -> ModelRef:
        stage = keys.get(reference_key(ref.path)) if ref.revision is None else None
        if stage is not None and stage not in found:
            found.append(stage)
        return ref

    map_model_refs(doc, visit)
    return found


_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def _name_for_out_path(out_path: str, taken: set[str]) -> str:
    """A plain stage name for an ``out_path`` (its last part, other characters as '-'), unique in the file."""
    last = reference_key(out_path).rsplit("/", 1)[-1]
    # letters, digits, '_', '-', '.'; starting with a letter or digit, no '..', at most 100 characters
    stem = re.sub(r"\.{2,}", ".", _NAME_CHARS.sub("-", last)).lstrip("._-").rstrip(".-")[:90] or "stage"
    name, n = stem, 2
    while name in taken or name == UNNAMED:
        name, n = f"{stem}-{n}", n + 1
    return name


def _stage_key(doc: Any, where: str) -> tuple[str | None, str | None]:
    """(name, out_path) of one document, checked (``spec_from_dict`` drops the out_path: it is no recipe key)."""
    if not isinstance(doc, dict) or "out_path" not in doc:
        return (doc.get("name") if isinstance(doc, dict) else None), None
    out_path = doc["out_path"]
    if not isinstance(out_path, str) or reference_key(out_path) in ("", ".", "/", ".."):
        shown = repr(out_path) if len(repr(out_path)) <= 80 else repr(out_path)[:77] + "..."
        raise SpecError(f"out_path must name a folder, got {shown}", path="out_path", source=where,
                        hint="e.g. 'out_path: ./models/step-one'; a later document uses it as "
                             "'model: ./models/step-one'")
    if doc.get("name") is not None:
        raise SpecError("give either 'name' or 'out_path', not both", path="out_path", source=where,
                        hint="'name:' is mergekit-multi's spelling, 'out_path:' mergekit-mega's; either names the stage")
    return None, out_path


def parse_stages(text: str, *, source: str = "spec") -> list[Stage]:
    """Every stage of a spec text, in the order they must run; a single document is one stage."""
    docs = load_yaml_documents(text, source=source)
    if not docs:
        raise SpecError(f"{source}: the spec is empty", hint="start with 'merge_method: ...'")
    if len(docs) == 1:
        spec = spec_from_dict(docs[0], source=source)
        return [Stage(getattr(spec, "name", None) or "merge", spec, ())]  # a tool recipe has no stage name

    specs: dict[str, MergeSpec] = {}
    labels: dict[str, str] = {}
    keys: dict[str, str] = {}  # reference key (stage name or out_path) -> stage name
    unnamed = 0
    for i, doc in enumerate(docs):
        where = f"{source}, document {i + 1}"
        name, out_path = _stage_key(doc, where)
        if name is not None or out_path is not None:
            where += f" ('{name if out_path is None else out_path}')"
        try:
            spec = spec_from_dict(doc, source=where)
        except SpecError as exc:
            if exc.source is not None:  # it names its document already
                raise
            raise SpecError(f"{where}: {exc.message}", hint=exc.hint) from None
        if not isinstance(spec, MergeSpec) and not is_moe_spec(spec):  # an MoE may be the final stage
            raise SpecError(f"{where}: an {spec.tool} recipe cannot be a stage of a multi-stage merge",
                            hint="run it on its own file, then name its output folder as a model")
        if out_path is not None:
            if reference_key(out_path) in keys:
                raise SpecError(f"'{out_path}' is written by an earlier document too", path="out_path",
                                source=where, hint="give every stage its own out_path")
            stage = _name_for_out_path(out_path, set(specs) | set(keys))
            keys[reference_key(out_path)] = stage
            labels[stage] = out_path
        else:
            if spec.name is not None:
                check_stage_name(spec.name, where)
            if spec.name is None:  # as in mergekit-multi, the one unnamed document is the final merge
                unnamed += 1
            stage = spec.name if spec.name is not None else UNNAMED
            if stage in specs or reference_key(stage) in keys or unnamed > 1:
                raise SpecError(f"{where}: " + (f"stage name '{stage}' is used twice" if spec.name
                                                else "a second document without a name or out_path"),
                                path="name", hint="give every intermediate stage its own 'name:' (or 'out_path:'); "
                                                  "at most one (the final merge) may go without")
            if spec.name is not None:
                keys[reference_key(stage)] = stage
            labels[stage] = stage
        specs[stage] = spec
    needs = {}
    for stage, spec in specs.items():
        others = {k: v for k, v in keys.items() if v != stage}
        needs[stage] = tuple(stage_refs(spec.raw, others))
    order = _ordered(list(specs), needs, source, labels)
    return [Stage(n, specs[n], needs[n], labels[n], {k: v for k, v in keys.items() if v in needs[n]}) for n in order]


UNNAMED = "(final)"
STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_stage_name(name: object, where: str) -> None:
    """A stage name names a folder inside our scratch folder: letters, digits, '_', '-', '.', no path."""
    if not isinstance(name, str) or not STAGE_NAME.fullmatch(name) or ".." in name:
        raise SpecError(f"{where}: stage name {shorten(repr(name), 80)} is not a plain name", path="name",
                        hint="use letters, digits, '_', '-' and '.' (up to 100, starting with a letter or digit), "
                             "no '/' or '..'")


def _ordered(names: list[str], needs: dict[str, tuple[str, ...]], source: str, labels: dict[str, str]) -> list[str]:
    """Dependency order, keeping file order where stages are independent; refuses cycles and two finals."""
    used = {n for deps in needs.values() for n in deps}
    finals = [labels[n] for n in names if n not in used]
    if len(finals) != 1:
        raise SpecError(f"{source}: {len(finals)} stages are not used by any other stage ({', '.join(finals) or 'none'}); "
                        "exactly one final stage is needed", path="name",
                        hint="use every intermediate stage as a model of a later stage, or split the file")
    done: list[str] = []
    pending = list(names)
    while pending:
        ready = next((n for n in pending if all(d in done for d in needs[n])), None)
        if ready is None:
            raise SpecError(f"{source}: stages depend on each other in a cycle: {', '.join(labels[n] for n in pending)}",
                            path="name")
        done.append(ready)
        pending.remove(ready)
    return done


def load_stages(path: str | Path) -> list[Stage]:
    return parse_stages(read_spec_text(path), source=str(path))
