"""The Space's form <-> YAML recipe, without any Gradio: pure functions the app and the tests call.

The YAML recipe is the source of truth (it is what Validate and Merge read). The form edits the keys it
understands and leaves every other key of the document alone, so gradients, filters, tokenizer settings
and ``hubmerge:`` options typed in the YAML survive a later edit of the form.

Parameter fields hold YAML values. A per-model field holds one value for every model, or one value per
model separated by ``;`` (``0.6; 0.4``); a YAML list is a gradient (``[0.2, 0.8]``), a list of mappings
is a set of filters (``[{filter: self_attn, value: 0.3}, {value: 0.5}]``). An empty field means
"not set" (the method's default applies).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from hubmerge.errors import HubmergeError, SpecError
from hubmerge.merge.methods import MergeMethod, Param, all_methods
from hubmerge.spec import parse_spec
from hubmerge.spec.yamlio import dump_yaml

DTYPES = ("bfloat16", "float16", "float32")
DTYPE_AS_INPUTS = "(as the inputs)"
DTYPE_CHOICES = (*DTYPES, DTYPE_AS_INPUTS)
DEFAULT_METHOD = "ties"
# Starting values for required parameters, so a fresh form is a valid recipe once models are named.
STARTERS = {"weight": "0.5", "t": "0.5"}
# Keys the form writes, in the order a recipe usually lists them; other keys keep their place after these.
FORM_KEYS = ("merge_method", "base_model", "models", "parameters", "dtype")


def methods() -> dict[str, MergeMethod]:
    return all_methods()


def method_names() -> list[str]:
    return list(methods())


def field_key(method: str, param: str) -> str:
    return f"{method}.{param}"


def param_fields() -> list[tuple[str, Param]]:
    """Every (method name, Param) the form has a field for, in a fixed order (the app's component order)."""
    return [(name, p) for name, m in methods().items() for p in m.params]


def is_checkbox(p: Param) -> bool:
    return p.type is bool and p.scope == "shared"


def initial_value(p: Param) -> Any:
    if is_checkbox(p):
        return bool(p.default)
    return STARTERS.get(p.name, "") if p.required else ""


def placeholder(p: Param) -> str:
    if p.required:
        return "required"
    if p.default is None:
        return "not set"
    return f"default: {value_text(p.default)}"


def field_help(p: Param) -> str:
    scope = ("per model: one value, or one per model separated by ';'" if p.scope == "model" else "shared")
    return f"{p.help} ({p.type.__name__}, {scope})".strip()


def method_info(name: str) -> str:
    m = methods().get(name)
    if m is None:
        return f"unknown merge method `{name}`"
    base = {"required": "needs a base model", "optional": "a base model is optional",
            "ignored": "no base model (a base, if named, is just another input)"}[m.base]
    inputs = f"{m.min_inputs}" + (f"–{m.max_inputs}" if m.max_inputs != m.min_inputs else "") if m.max_inputs \
        else f"{m.min_inputs} or more"
    text = f"**{m.name}**: {m.summary} — {base}; inputs: {inputs}."
    if m.paper:
        text += f" [paper]({m.paper})"
    if m.random:
        text += " Random: seeded per tensor by `hubmerge.seed`."
    if not m.in_mergekit:
        text += " (hubmerge only: not in mergekit 0.1.5)"
    return text


# ---------------------------------------------------------------------------------------------------
# values <-> text

def value_text(value: Any) -> str:
    """A YAML value as the one-line text a field shows."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()


class FormError(ValueError):
    """A form field that cannot become YAML; ``field`` names it."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


def parse_value(text: str, field_name: str) -> Any:
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise FormError(field_name, f"{text!r} is not a value (a number, true/false, or a [gradient] list)") from None
    if isinstance(value, str) and "," in value and not text.startswith(("'", '"')):
        try:
            value = yaml.safe_load(f"[{text}]")  # "0.2, 0.8" typed without brackets: a gradient
        except yaml.YAMLError:
            pass
    return value


def parse_model_values(text: str, n_models: int, field_name: str) -> list[Any]:
    """One value per model: a single value is repeated; ``a; b`` gives one each."""
    parts = [p for p in (text or "").split(";")]
    if len(parts) == 1:
        return [parse_value(parts[0], field_name)] * n_models
    if len(parts) != n_models:
        raise FormError(field_name, f"{len(parts)} values separated by ';' for {n_models} models")
    return [parse_value(p, field_name) for p in parts]


def model_values_text(values: list[Any]) -> str:
    if not values:
        return ""
    if all(v == values[0] for v in values):
        return value_text(values[0])
    return "; ".join(value_text(v) for v in values)


def ref_text(value: Any) -> str:
    """A model reference from a recipe (``org/name@rev`` or ``{path:, revision:}``) as one line."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, dict) and "path" in value:
        return str(value["path"]) + (f"@{value['revision']}" if value.get("revision") else "")
    if isinstance(value, dict) and "model" in value:
        return ref_text(value["model"])
    return "" if value is None else str(value)


def model_lines(text: str) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip() and not line.strip().startswith("#")]


# ---------------------------------------------------------------------------------------------------
# form -> YAML

@dataclass
class Form:
    method: str = DEFAULT_METHOD
    base_model: str = ""
    models: str = ""  # one reference per line
    dtype: str = "bfloat16"
    values: dict[str, Any] = field(default_factory=dict)  # field_key(method, param) -> text or bool
    repo_name: str = ""
    private: bool = False


def load_document(text: str) -> dict[str, Any] | None:
    """The YAML text as a mapping, or None when it is not one (then the form starts a fresh recipe)."""
    try:
        doc = yaml.safe_load(text or "")
    except yaml.YAMLError:
        return None
    return doc if isinstance(doc, dict) else None


def form_to_document(form: Form, current: dict[str, Any] | None = None) -> dict[str, Any]:
    m = methods().get(form.method)
    if m is None:
        raise FormError("merge method", f"unknown method {form.method!r}")
    old = dict(current or {})
    doc: dict[str, Any] = {"merge_method": m.name}
    if form.base_model.strip():
        doc["base_model"] = form.base_model.strip()
    refs = model_lines(form.models)
    uses_slices = "slices" in old and "models" not in old
    if not uses_slices:
        entries: list[dict[str, Any]] = [{"model": r} for r in refs]
        for p in m.params:
            if p.scope != "model":
                continue
            raw = form.values.get(field_key(m.name, p.name), "")
            values = parse_model_values(str(raw if raw is not None else ""), len(refs), p.name)
            for entry, value in zip(entries, values):
                if value is not None:
                    entry.setdefault("parameters", {})[p.name] = value
        doc["models"] = entries
    shared: dict[str, Any] = {}
    for p in m.params:
        if p.scope != "shared":
            continue
        raw = form.values.get(field_key(m.name, p.name))
        if is_checkbox(p):
            if raw is not None and bool(raw) != bool(p.default):
                shared[p.name] = bool(raw)
            continue
        value = parse_value(str(raw or ""), p.name)
        if value is not None:
            shared[p.name] = value
    if shared:
        doc["parameters"] = shared
    if form.dtype in DTYPES:
        doc["dtype"] = form.dtype
    for key, value in old.items():
        if key not in FORM_KEYS:
            doc[key] = value
    # Shared parameters the form does not know (a filter on a parameter of another method is invalid
    # anyway) are dropped; per-slice parameters stay inside the slices the form left alone.
    return doc


def form_to_yaml(form: Form, current_text: str = "") -> str:
    return dump_yaml(form_to_document(form, load_document(current_text)))


# ---------------------------------------------------------------------------------------------------
# YAML -> form

@dataclass
class Loaded:
    form: Form | None  # None when the text is not a YAML mapping at all
    error: str | None  # the first problem, with its YAML path
    notes: list[str] = field(default_factory=list)


def check_yaml(text: str) -> str | None:
    """None when the recipe is valid (schema and meaning), else the error with its YAML path."""
    try:
        parse_spec(text, source="recipe")
    except SpecError as exc:
        return str(exc)
    except HubmergeError as exc:
        return str(exc)
    return None


def yaml_to_form(text: str) -> Loaded:
    error = check_yaml(text)
    doc = load_document(text)
    if doc is None:
        return Loaded(None, error or "the recipe must be a YAML mapping (merge_method: ...)")
    form = Form()
    notes: list[str] = []
    method = doc.get("merge_method")
    m = methods().get(method) if isinstance(method, str) else None
    if m is not None:
        form.method = m.name
    elif method is not None:
        notes.append(f"merge method {method!r} is not one the form knows")
    form.base_model = ref_text(doc.get("base_model"))
    entries = doc.get("models") if isinstance(doc.get("models"), list) else []
    form.models = "\n".join(ref_text(e) for e in entries if isinstance(e, dict))
    if doc.get("slices"):
        notes.append("this recipe uses slices: edit them in the YAML (the form leaves them as they are)")
    dtype = doc.get("dtype")
    form.dtype = dtype if dtype in DTYPES else DTYPE_AS_INPUTS
    if dtype is not None and dtype not in DTYPES:
        notes.append(f"dtype {dtype!r} is kept in the YAML")
    shared = doc.get("parameters") if isinstance(doc.get("parameters"), dict) else {}
    if m is not None:
        for p in m.params:
            key = field_key(m.name, p.name)
            if p.scope == "model":
                values = [(e.get("parameters") or {}).get(p.name) if isinstance(e, dict) else None for e in entries]
                form.values[key] = model_values_text(values)
            elif is_checkbox(p):
                value = shared.get(p.name, p.default)
                form.values[key] = value if isinstance(value, bool) else bool(p.default)
                if p.name in shared and not isinstance(value, bool):
                    notes.append(f"parameters.{p.name} is not a plain true/false: edit it in the YAML")
            else:
                form.values[key] = value_text(shared.get(p.name))
    options = doc.get("hubmerge") if isinstance(doc.get("hubmerge"), dict) else {}
    if isinstance(options.get("target"), str):
        form.repo_name = options["target"]
    form.private = bool(options.get("private", False))
    return Loaded(form, error, notes)


# ---------------------------------------------------------------------------------------------------
# form == YAML?

FORM_KEY_NAMES = {"merge_method": "merge method", "base_model": "base model", "models": "parent models / "
                  "per-model parameters", "parameters": "shared parameters", "dtype": "dtype"}


def out_of_sync(form: Form, text: str) -> str | None:
    """Which part of the form the YAML does not say yet, or None when they agree.

    The merge reads the YAML. Gradio 6 fires a Textbox's ``input`` event on key presses only, so a value
    pasted with the mouse or filled in by the browser reaches the YAML when the field loses focus, and a
    click on Merge right after typing can race the update. Both sides are compared as the form would
    write them (the YAML read back into a form), so formatting the form cannot express is not a difference.
    """
    comparable, problem = _compare(form, text)
    return problem if comparable else None


def says_the_same(form: Form, text: str) -> bool:
    """The YAML already says what the form shows: rewriting it would only lose its comments and layout."""
    comparable, problem = _compare(form, text)
    return comparable and problem is None


def _compare(form: Form, text: str) -> tuple[bool, str | None]:
    """(whether the YAML is a recipe the form can show, the first difference or None)."""
    doc = load_document(text)
    if doc is None or methods().get(doc.get("merge_method")) is None:
        return False, None  # not a recipe the form can show: the merge reports the YAML's own error
    try:
        wanted = form_to_document(form, doc)
    except FormError as exc:
        return True, str(exc)
    loaded = yaml_to_form(text).form
    try:
        written = form_to_document(loaded, doc) if loaded is not None else {}
    except FormError:
        return False, None
    for key in FORM_KEYS:
        if wanted.get(key) != written.get(key):
            return True, f"the {FORM_KEY_NAMES[key]} in the form and in the YAML recipe differ"
    return True, None


def initial_form() -> Form:
    values = {field_key(name, p.name): initial_value(p) for name, p in param_fields()}
    return Form(values=values)


EXAMPLE_NOTE = "# Name the parent models in the form (or here), then Validate.\n"


def initial_yaml() -> str:
    return form_to_yaml(initial_form())
