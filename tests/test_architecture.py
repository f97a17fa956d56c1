"""The folder tree is the architecture: every import inside ``hubmerge/`` (at module level, under
``if TYPE_CHECKING``, or inside a function) points down the layers, and no modules import each other in a
circle. The layers are written once, here and in the README's Architecture section (checked below):

    cli -> commands -> evolve -> pipeline -> hub -> {merge, output} -> sources -> spec -> errors

A module may import its own package and any package of a lower layer; ``merge`` and ``output`` share a
layer and never import each other. The package root (``hubmerge/__init__.py``: the version) may be imported
from anywhere; it imports only the merge-method registry, which fills the table of methods spec/ checks
recipes against (see hubmerge/spec/methods.py).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hubmerge"

# Lowest first. Packages on one line share a layer and may not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "demo"),
    ("spec",),
    ("sources",),
    ("merge", "output"),
    ("hub",),
    ("pipeline",),
    ("evolve",),
    ("commands",),
    ("cli",),
]
# The package root's own imports, each with the reason it may make it.
ROOT_IMPORTS = {"hubmerge.merge.methods": "fills spec's method table before any spec is parsed"}


def component(module: str) -> str:
    """``hubmerge.merge.plan`` -> ``merge``; the root package is ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def rank(module: str) -> int:
    name = component(module)
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    raise AssertionError(f"{module}: its package {name!r} has no layer; add it to LAYERS (and the README)")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(name: str) -> str:
    """The module an imported name lives in: ``hubmerge.spec.parse.spec_from_dict`` -> ``hubmerge.spec.parse``."""
    parts = name.split(".")
    while parts:
        candidate = ROOT.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    raise AssertionError(f"cannot find the module of {name}")


def imports_of(path: Path) -> set[str]:
    """Every hubmerge module ``path`` imports, wherever the import statement stands."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                start = ".".join(base + ([node.module] if node.module else []))
            else:
                start = node.module or ""
            names = [f"{start}.{a.name}" for a in node.names]
        else:
            continue
        found.update(_resolve(n) for n in names if n == "hubmerge" or n.startswith("hubmerge."))
    found.discard(this)
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        for target in sorted(targets):
            if component(target) == "":  # the root: the version
                continue
            if component(module) == "":
                if target not in ROOT_IMPORTS:
                    bad.append(f"{module} -> {target} (the package root imports only {sorted(ROOT_IMPORTS)})")
                continue
            if component(target) == component(module):
                continue
            if rank(target) >= rank(module):
                how = "shares its layer" if rank(target) == rank(module) else "is above it"
                bad.append(f"{module} -> {target} ({component(target)} {how})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_import_points_down_the_layers():
    bad = upward_arrows(import_graph())
    assert not bad, "imports against the layering (see tests/test_architecture.py):\n  " + "\n  ".join(bad)


def test_no_modules_import_each_other_in_a_circle():
    found = cycles(import_graph())
    assert not found, "import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in found)


def test_the_checks_catch_a_wrong_arrow_and_a_cycle(tmp_path):
    graph = {
        "hubmerge.spec.parse": {"hubmerge.merge.plan"},  # spec reaching up
        "hubmerge.output.card": {"hubmerge.merge.plan", "hubmerge.spec.parse"},  # a sibling
        "hubmerge.merge.plan": {"hubmerge.spec.parse", "hubmerge"},
        "hubmerge": {"hubmerge.pipeline.run"},  # the root importing more than its one allowed import
    }
    bad = upward_arrows(graph)
    assert any(b.startswith("hubmerge.spec.parse -> hubmerge.merge.plan") for b in bad)
    assert any(b.startswith("hubmerge.output.card -> hubmerge.merge.plan (merge shares its layer)") for b in bad)
    assert any(b.startswith("hubmerge -> hubmerge.pipeline.run") for b in bad)
    assert not any(b.startswith("hubmerge.merge.plan") for b in bad)
    assert cycles(graph) == [["hubmerge.merge.plan", "hubmerge.spec.parse"]]
    # Function-level and relative imports are read too.
    pkg = tmp_path / "hubmerge" / "output"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("def f():\n    from ..merge import plan\n    import hubmerge.hub.client\n")
    global ROOT
    saved = ROOT
    try:
        ROOT = tmp_path
        for name in ("merge/plan.py", "hub/client.py"):
            (tmp_path / "hubmerge" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "hubmerge" / name).write_text("")
        assert imports_of(pkg / "x.py") == {"hubmerge.merge.plan", "hubmerge.hub.client"}
    finally:
        ROOT = saved


def test_every_module_has_a_layer_and_every_folder_is_a_package():
    for path in PACKAGE.rglob("*.py"):
        if module_name(path) != "hubmerge":
            rank(module_name(path))
    for folder in PACKAGE.rglob("*"):
        if folder.is_dir() and folder.name != "__pycache__" and any(folder.glob("*.py")):
            assert (folder / "__init__.py").is_file(), f"{folder.relative_to(ROOT)} has no __init__.py"


def _architecture_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Architecture\n(.*?)^## ", readme, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no '## Architecture' section"
    return match.group(1)


def test_readme_architecture_names_every_folder_and_the_layering():
    section = _architecture_section()
    for folder in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()):
        assert re.search(rf"^{folder.name}/ ", section, re.MULTILINE), f"README Architecture: no line for {folder.name}/"
    for module in sorted(p for p in PACKAGE.glob("*.py") if p.name != "__init__.py"):
        assert re.search(rf"^{module.name} ", section, re.MULTILINE), f"README Architecture: no line for {module.name}"
    order = " -> ".join("{" + ", ".join(layer) + "}" if len(layer) > 1 else layer[0] for layer in reversed(LAYERS))
    assert order in section, f"README Architecture should state the layering as: {order}"


def test_no_comment_or_docstring_names_a_path_outside_the_repo():
    """Notes on the developers' machines are not part of the repo: the code must explain itself."""
    outside = re.compile(r"/work/|/home/|shared/notes")
    files = [p for d in ("hubmerge", "tests", "space", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    hits = [str(p.relative_to(ROOT)) for p in files if p.name != Path(__file__).name
            and outside.search(p.read_text(encoding="utf-8"))]
    assert not hits, f"paths outside the repo named in {hits}"
