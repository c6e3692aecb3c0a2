"""The package's shape, read from its imports (every ``import``, at module level or inside a function):

- stage one (``pipeline.extraction``) and stage two (``pipeline.classification``) never import each other;
- the shared hall (config, validation, store, atomic, cluster) imports neither stage;
- no module of ``pipeline`` imports itself back through any chain of imports (no cycle).

``from pipeline.x import y`` imports ``pipeline.x``, or ``pipeline.x.y`` when that is a module. A failure names the
import and where it is (file:line).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pipeline"
EXTRACTION, CLASSIFICATION = "pipeline.extraction", "pipeline.classification"
HALL = ("pipeline.config", "pipeline.validation", "pipeline.store", "pipeline.atomic", "pipeline.cluster")
# What each group of modules must never import: (group, forbidden package, why).
FORBIDDEN = [
    (CLASSIFICATION, EXTRACTION, "stage two reads features files only, never stage one's code"),
    (EXTRACTION, CLASSIFICATION, "stage one writes features files and knows nothing of the classifiers"),
    *((hall, stage, "the shared hall sits below both stages") for hall in HALL for stage in (EXTRACTION, CLASSIFICATION)),
]


@dataclass(frozen=True)
class Import:
    """One import statement's module: who imports what, and where."""

    importer: str
    imported: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}: {self.importer} imports {self.imported}"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def imports_of(module: str, path: Path) -> list[Import]:
    """Every import of a pipeline module in ``path``, wherever it stands (module level, function, class)."""
    found = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package, up level - 1 packages
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found += [Import(module, target, path, node.lineno) for target in targets if within(target, "pipeline")]
    return found


IMPORTS = [found for module, path in MODULES.items() for found in imports_of(module, path)]


def cycles(imports: list[Import]) -> list[list[Import]]:
    """One cycle of imports through each strongly connected group of modules (Tarjan), as the imports that close it."""
    edges: dict[str, list[Import]] = {}
    for item in imports:
        edges.setdefault(item.importer, []).append(item)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(module: str) -> None:  # recursion depth is at most the number of modules
        index[module] = low[module] = len(index)
        stack.append(module)
        for item in edges.get(module, []):
            if item.imported not in index:
                visit(item.imported)
                low[module] = min(low[module], low[item.imported])
            elif item.imported in stack:
                low[module] = min(low[module], index[item.imported])
        if low[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == module:
                    break
            if len(group) > 1 or any(item.imported == module for item in edges.get(module, [])):
                groups.append(group)

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return [_cycle_in(group, edges) for group in groups]


def _cycle_in(group: set[str], edges: dict[str, list[Import]]) -> list[Import]:
    """A path of imports inside ``group`` from its first module back to itself (breadth first: a shortest one)."""
    start = min(group)
    came: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for item in edges.get(module, []):
                if item.imported not in group:
                    continue
                if item.imported == start:
                    path = [item]
                    while path[0].importer != start:
                        path.insert(0, came[path[0].importer])
                    return path
                if item.imported not in came:
                    came[item.imported] = item
                    following.append(item.imported)
        frontier = following
    raise AssertionError(f"no cycle in {sorted(group)}")


def test_the_scan_sees_imports_at_module_level_and_inside_functions():
    seen = {(item.importer, item.imported) for item in IMPORTS}
    assert ("pipeline.extraction.extract", "pipeline.store") in seen  # module level
    assert ("pipeline.extraction.extract", "pipeline.extraction.shards") in seen  # inside extract_features
    assert ("pipeline.extraction.backbone", "pipeline.extraction.weights") in seen  # from pipeline.extraction import x
    assert ("pipeline.cli", "pipeline.predict") in seen  # inside a function


def test_the_stages_and_the_shared_hall_import_only_downwards():
    wrong = [
        f"{item} ({why})"
        for item in IMPORTS
        for group, forbidden, why in FORBIDDEN
        if within(item.importer, group) and within(item.imported, forbidden)
    ]
    assert not wrong, "imports across the layers:\n" + "\n".join(wrong)


def test_no_import_cycle():
    found = cycles(IMPORTS)
    described = [" -> ".join([path[0].importer, *(item.imported for item in path)]) + "\n  " + "\n  ".join(map(str, path))
                 for path in found]
    assert not found, "import cycles in pipeline/:\n" + "\n".join(described)


def test_a_cycle_is_reported_with_the_imports_that_close_it():
    here = Path(__file__)
    imports = [Import("a", "b", here, 1), Import("b", "c", here, 2), Import("c", "a", here, 3), Import("c", "d", here, 4),
               Import("d", "d", here, 5)]
    assert sorted([[item.line for item in path] for path in cycles(imports)]) == [[1, 2, 3], [5]]
    assert str(imports[2]) == "tests/test_layering.py:3: c imports a"
