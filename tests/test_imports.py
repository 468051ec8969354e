"""The package's layers: every import points down (or within its own subpackage), and nothing imports in a
cycle, deferred (function-level) imports included."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "phaseflip"

# Bottom to top. The foundation is the top-level modules every layer shares (config, data, io, ...).
LAYERS = {"foundation": 0, "stats": 1, "model": 1, "measure": 2, "prepare": 3, "interventions": 3, "forecast": 4,
          "report": 5, "stages": 6, "tools": 7, "cli": 7}
ENTRY_POINTS = {"cli"}  # top-level modules that are not foundation


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the phaseflip modules it imports anywhere in its body (a name imported from a package
    that is itself a module counts as that module)."""
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "phaseflip":
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("phaseflip.")}
        name = module_name(path)
        graph[name] = deps - {name}
    return graph


def group_of(module: str) -> str:
    """The layer group of a module: its subpackage, `cli`, or the foundation."""
    parts = module.split(".")
    if len(parts) == 1:
        return "foundation"  # the package's own __init__
    if (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return parts[1] if parts[1] in ENTRY_POINTS else "foundation"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in graph.items():
        here = group_of(module)
        for dep in deps:
            there = group_of(dep)
            if there != here and LAYERS[there] >= LAYERS[here]:
                bad.append(f"{module} ({here}, layer {LAYERS[here]}) imports {dep} ({there}, layer {LAYERS[there]})")
    return sorted(bad)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep, [*path, dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_layer_check_finds_a_planted_upward_import() -> None:
    planted = {"phaseflip.stats.intervals": {"phaseflip.model.scoring"},  # same layer, other group
               "phaseflip.model.scoring": {"phaseflip.measure.judge"},  # up
               "phaseflip.measure.judge": {"phaseflip.config", "phaseflip.model.scoring"}}  # down: fine
    assert upward_imports(planted) == [
        "phaseflip.model.scoring (model, layer 1) imports phaseflip.measure.judge (measure, layer 2)",
        "phaseflip.stats.intervals (stats, layer 1) imports phaseflip.model.scoring (model, layer 1)"]


def test_every_subpackage_has_a_layer() -> None:
    subpackages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subpackages <= LAYERS.keys(), subpackages - LAYERS.keys()


def test_no_import_cycle_in_the_package() -> None:
    graph = import_graph()
    assert {"phaseflip.config", "phaseflip.forecast.analysis", "phaseflip.forecast.methods"} <= graph.keys()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_imports_point_down_the_layers() -> None:
    graph = import_graph()
    assert "phaseflip.stats.t50" in graph["phaseflip.forecast.analysis"]  # the graph sees real imports
    assert upward_imports(graph) == []
