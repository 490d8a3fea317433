"""The package's rooms import only downwards (README, "Architecture").

Every `import` / `from ... import` of the package is read with `ast`: module-level ones, those inside
functions (lazy imports) and those under `if TYPE_CHECKING:` alike, so a late import cannot hide an
arrow that runs back up. A new top-level module or package has to be placed in `ALLOWED` first.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "sparse_offline_rl"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

BOTTOM = {"errors", "checks", "io", "seeding"}  # import nothing of the package but errors
#: room -> the rooms it may import, bottom to top. A room may always import its own modules.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "checks": {"errors"},
    "io": {"errors"},
    "seeding": set(),
    "compat": set(),  # old module paths -> new ones, by name only
    "data": BOTTOM,  # loading; making is generation's (FILE_EXCEPTIONS: the three files that reach it)
    "generation": BOTTOM | {"data"},  # making datasets: behaviour SAC, policies, collecting, writing
    "sparse": BOTTOM,  # the mechanism: masks, wiring, CSR and stacked layers, kernel choice, counts
    "pruning": BOTTOM | {"data", "sparse"},  # talks to algorithms only through the protocol's methods
    "sparse_training": BOTTOM | {"data", "sparse", "pruning"},
    "algorithms": BOTTOM | {"data", "sparse"},
    "evaluation": BOTTOM | {"data", "sparse", "pruning", "algorithms"},
    "training": BOTTOM | {"data", "sparse", "pruning", "sparse_training", "algorithms", "evaluation"},
}
#: Single files allowed one arrow more than their room, each for a reason that says why.
FILE_EXCEPTIONS: dict[str, tuple[str, str]] = {
    "data/loaders.py": ("generation", "a project dataset missing on disk is made on first use"),
    "data/__main__.py": ("generation", "`python -m sparse_offline_rl.data make` is a command"),
    "data/behavior.py": ("generation", "the old path of `python -m ...data.behavior`, kept as a command"),
}
LIBRARY = set(ALLOWED)
# The commands sit on top of the library and never import each other: run.py -> cli,
# `python -m sparse_offline_rl.evaluate`, `... .report`, `... .export`, `... .compress`.
ALLOWED.update({command: LIBRARY for command in ("cli", "evaluate", "report", "export", "compress")})


def room_of(module: str) -> str:
    """`sparse_offline_rl.data.buffer` -> `data`; the package root itself -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of the package in the file, wherever it stands."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; write the absolute module"
            if node.module == PACKAGE:
                # `from sparse_offline_rl import data` imports the room `data`; a name the root
                # re-exports (`from sparse_offline_rl import OfflineDataset`) counts as a room of
                # its own and fails: inside the package, import from the room that defines it.
                found += [(node.lineno, f"{PACKAGE}.{alias.name}") for alias in node.names]
            elif node.module:
                found.append((node.lineno, node.module))
    # `import sparse_offline_rl` alone runs only the root, which every import of a room runs anyway
    return [(line, module) for line, module in found if module.startswith(PACKAGE + ".")]


def test_every_room_imports_only_the_rooms_below_it():
    violations = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        room = "__init__" if parts == ("__init__",) else parts[0]
        if room == "__init__":
            continue  # the package root is the public face: it may re-export from any room
        assert room in ALLOWED, f"{path}: room '{room}' has no place in the layering; add it to ALLOWED in {__file__}"
        for line, module in imported_modules(path):
            target = room_of(module)
            exception = FILE_EXCEPTIONS.get(path.relative_to(ROOT).as_posix(), ("", ""))[0]
            if target != room and target not in ALLOWED[room] and target != exception:
                violations.append(f"{path.relative_to(ROOT.parent)}:{line} ({room}) imports {module} ({target})")
    assert not violations, "imports that run against the layering:\n" + "\n".join(violations)


def test_the_checker_sees_lazy_and_type_checking_imports(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from sparse_offline_rl.training.trainer import train\n"
        "def f():\n    import sparse_offline_rl.cli\n    from sparse_offline_rl import evaluation\n"
    )
    assert [room_of(m) for _, m in imported_modules(source)] == ["training", "cli", "evaluation"]


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) for every `from <package module> import name` in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
    return found


def test_no_private_name_is_imported_across_modules():
    """A name starting with one underscore is its module's own; another module that needs it gets a public one."""
    private = [f"{path.relative_to(ROOT.parent)}:{line} imports {name} from {module}"
               for path in sorted(ROOT.rglob("*.py")) for line, module, name in imported_names(path)
               if name.startswith("_") and not name.startswith("__")]
    assert not private, "private names imported across modules:\n" + "\n".join(private)


def runtime_imports(path: Path) -> list[tuple[int, str]]:
    """`imported_modules` without those under `if TYPE_CHECKING:` (annotations only: no import runs)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                   for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    lines = {n.lineno for n in ast.walk(tree) if id(n) in typing_only}
    return [(line, module) for line, module in imported_modules(path) if line not in lines]


def test_no_module_imports_itself_back_through_a_circle():
    """Modules form a directed acyclic graph (lazy imports included; annotations under TYPE_CHECKING
    run no import), inside each package as well as between them; a package's `__init__` may
    re-export from its own modules."""
    edges: dict[str, set[str]] = {}
    modules = {module_of(path): path for path in ROOT.rglob("*.py")}
    for name, path in modules.items():
        targets = {m for _, m in runtime_imports(path) if m in modules and m != name}
        if path.name == "__init__.py":
            targets = {m for m in targets if not m.startswith(name + ".")}
        edges[name] = {t for t in targets if not (modules[t].name == "__init__.py" and name.startswith(t + "."))}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [node]):
                return True
        state[node] = 2
        return False

    assert not any(visit(m, []) for m in sorted(modules) if state.get(m) is None), " -> ".join(cycle)
