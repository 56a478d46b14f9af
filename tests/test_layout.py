"""The house rules of `llaca/`: its sub-packages stack in one order, no import cycle, no private
name used across modules, no file past 400 lines, and the architecture page names every module.

Read from the source with `ast` (no import runs), so the rules also cover imports made
inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Lowest first: a package may import its own modules and those of packages before it.
LAYERS = ("config", "model", "learn", "world", "groups", "serve", "worker", "bench", "cli")
CODE_DIRS = ("llaca", "app", "feedback_store", "benchmarks", "tests")
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def llaca_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / "llaca").rglob("*.py")) if "__pycache__" not in p.parts}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else "cli"


def resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Each llaca module's imports of llaca modules (a name imported from a package that is
    one of its modules counts as that module)."""
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                target = resolve(mod, path, node)
                found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names}
        graph[mod] = {m for m in found if m in modules and m != mod}
    return graph


def test_packages_stack_in_one_order():
    graph = imports(llaca_modules())
    upward = [f"{a} -> {b}" for a, targets in graph.items() for b in targets
              if b != "llaca" and LAYERS.index(layer(b)) > LAYERS.index(layer(a))]
    assert not upward, "imports from a lower package up to a higher one:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    graph = imports(llaca_modules())
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(" -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def private_names_defined(tree: ast.AST) -> set[str]:
    """The private names a module defines: functions, classes, module globals and attributes
    it assigns (``self._x = ...``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_no_private_name_crosses_a_module():
    """A private name (one leading underscore) of ours is used only in the module that defines
    it: no `from x import _name` (llaca, app, feedback_store), and in llaca no `other._name` on
    anything but `self`/`cls`. What another module needs is public."""
    trees = {p: ast.parse(p.read_text()) for d in ("llaca", "app", "feedback_store")
             for p in sorted((ROOT / d).rglob("*.py")) if "__pycache__" not in p.parts}
    defined = {p: private_names_defined(tree) for p, tree in trees.items()}
    bad = []
    for path, tree in trees.items():
        elsewhere = set().union(*(names for q, names in defined.items() if q != path)) - defined[path]
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] in
                                                     ("llaca", "app", "feedback_store")):
                bad += [f"{where}:{node.lineno} imports {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
            elif (isinstance(node, ast.Attribute) and node.attr in elsewhere and path.is_relative_to(ROOT / "llaca")
                  and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                bad.append(f"{where}:{node.lineno} uses .{node.attr}, private to another module")
    assert not bad, "private names used across modules:\n" + "\n".join(sorted(bad))


def test_no_file_past_the_limit():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for d in CODE_DIRS for p in sorted((ROOT / d).rglob("*.py"))
            if "__pycache__" not in p.parts and (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"files over {MAX_LINES} lines:\n" + "\n".join(long)


def test_every_package_and_module_says_what_it_owns():
    missing = [m for m, p in llaca_modules().items() if ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, f"modules without a docstring: {missing}"


def test_architecture_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [str(p.relative_to(ROOT)) for m, p in llaca_modules().items()
               if p.name != "__init__.py" and str(p.relative_to(ROOT / "llaca")) not in text
               and str(p.relative_to(ROOT)) not in text]
    assert not missing, "docs/architecture.md does not name:\n" + "\n".join(missing)
