"""The import graph between the project's top-level packages: services never import each other.

Layers, lowest first: `rlfleet` (shared plumbing: wire types, clients, config, servers) and `fused`
(loss-head kernels) and `tasks` (built-in task data) -> the services (`generator`, `reward_server`,
`env_server`, `reference`, `learner`) -> `launcher` (runs them all) and `bench`. A package may import
its own layer's shared pieces and anything below it, never a sibling service.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"generator", "reward_server", "env_server", "reference", "learner"}
# What each package may import from the project (itself always allowed).
ALLOWED = {
    "rlfleet": set(),
    "fused": set(),
    "tasks": set(),
    **{service: {"rlfleet", "fused", "tasks"} for service in SERVICES},
}
PROJECT = SERVICES | {"rlfleet", "fused", "tasks", "launcher", "bench"}


def imported_packages(path: Path) -> set[str]:
    """Top-level project packages that a file imports (at module level or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & PROJECT


def test_imported_packages_reads_nested_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\nfrom learner.x import y\n\ndef f():\n    import generator.core\n    from . import z\n")
    assert imported_packages(source) == {"learner", "generator"}


def test_no_package_imports_a_sibling_service_or_a_higher_layer():
    violations = []
    for package, allowed in ALLOWED.items():
        folder = ROOT / package
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.py")):
            if "v1" in path.relative_to(folder).parts[:1]:
                continue  # generated code
            for name in sorted(imported_packages(path) - allowed - {package}):
                violations.append(f"{path.relative_to(ROOT)} imports {name}")
    assert violations == []
