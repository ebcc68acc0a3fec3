"""The layering of ``beats_fairseq`` (docs/architecture.md), checked by parsing every import,
the ones deferred inside functions included."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "beats_fairseq"

# Lowest first. A module may import its own component and the components of lower layers.
LAYERS = [
    ("constants", "errors", "import_hook"),
    ("seeding", "metrics", "linear_probe", "plots", "tables", "recipes", "checkpoint", "distributed", "safe_checkpoints", "optim",
     "modules"),
    ("preemption", "rank_watch", "run_lock"),
    ("augment", "data", "tokenizers", "criterions", "features", "fairseq_patches"),
    ("models",),
    ("loading",),
    ("tasks",),
    ("evaluation",),
    ("probe_heads",),
    ("export", "hear", "probe", "precompute", "label_quality"),
    ("pipeline",),
    ("cli",),
]
# The only modules that may import a model class (besides the models and the package itself).
MODEL_IMPORTERS = ("models", "loading", "tasks", "cli")
# Known exceptions, each with the change that removes it. Each must still exist (no stale entries).
KNOWN = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph():
    """{module: set of package modules it imports}; names are relative to the package ('' = its __init__).

    Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` too: those count as imported,
    except the importer's own packages and the package's ``__init__`` (it imports the registering
    components, and ``loading``, only when fairseq is imported or a name of it is first used).
    """
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        package = [p for p in package if p]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1] + ([node.module] if node.module else [])
                elif (node.module or "").startswith("beats_fairseq"):
                    base = node.module.split(".")[1:]
                else:
                    continue
                base = ".".join(base)
                for alias in node.names:
                    sub = f"{base}.{alias.name}" if base else alias.name
                    found.add(sub if sub in files else base)
            elif isinstance(node, ast.Import):
                found.update(".".join(a.name.split(".")[1:]) for a in node.names if a.name.startswith("beats_fairseq."))
        targets = set()
        for target in found:
            parts = target.split(".")
            targets.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
        # a module's own packages are already running when it runs: no import of them
        graph[name] = {t for t in targets if t in files and t and t != name and not name.startswith(t + ".")}
    return graph


def component(module: str) -> str:
    return module.split(".")[0]


def layer(module: str) -> int:
    for rank, names in enumerate(LAYERS):
        if component(module) in names:
            return rank
    raise AssertionError(f"beats_fairseq.{module} is in no layer: add it to LAYERS here and to docs/architecture.md")


def known(a: str, b: str) -> bool:
    """``a -> b`` is a known exception, or the import of a package of one (``probe -> cli``)."""
    return any(a == x and (b == y or y.startswith(b + ".")) for x, y in KNOWN)


def edges(graph):
    return [(a, b) for a, targets in graph.items() for b in sorted(targets) if not known(a, b)]


def test_known_exceptions_still_exist():
    graph = import_graph()
    stale = [edge for edge in KNOWN if edge[1] not in graph.get(edge[0], ())]
    assert not stale, f"these imports are gone: remove them from KNOWN: {stale}"


def test_every_import_goes_down_the_layers():
    graph = import_graph()
    upwards = [f"{a} -> {b}" for a, b in edges(graph) if a and component(a) != component(b) and layer(b) >= layer(a)]
    assert not upwards, "imports against the layers of docs/architecture.md:\n" + "\n".join(upwards)


def test_only_loading_tasks_and_cli_import_the_models():
    graph = import_graph()
    wrong = [f"{a} -> {b}" for a, b in edges(graph)
             if a and component(b) == "models" and component(a) not in MODEL_IMPORTERS]
    assert not wrong, "model classes are imported below loading.py:\n" + "\n".join(wrong)


def test_no_import_circles():
    graph = {a: set() for a in import_graph()}
    for a, b in edges(import_graph()):
        if a:
            graph[a].add(b)
    circles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_checker_sees_deferred_and_upward_imports(tmp_path, monkeypatch):
    """The rules catch what they are for: a deferred import circle and an upward import."""
    fake = tmp_path / "beats_fairseq"
    (fake / "modules").mkdir(parents=True)
    (fake / "__init__.py").write_text("from . import modules, loading\n")
    (fake / "modules" / "__init__.py").write_text("")
    (fake / "modules" / "encoder.py").write_text("def f():\n    from ..loading import load\n")
    (fake / "loading.py").write_text("from .modules.encoder import f\n")
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    graph = import_graph()
    assert graph["modules.encoder"] == {"loading"} and graph["loading"] == {"modules", "modules.encoder"}
    for check in (test_every_import_goes_down_the_layers, test_no_import_circles):
        try:
            check()
        except AssertionError as exc:
            assert "modules.encoder -> loading" in str(exc)
        else:
            raise AssertionError(f"{check.__name__} missed modules.encoder -> loading")
