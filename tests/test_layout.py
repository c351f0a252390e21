"""The rooms of docs/layout.md: each imports only the rooms its row allows."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = ROOT / "docs" / "layout.md"
_ROW = re.compile(r"^\| `(\w+)` \|[^|]*\|([^|]*)\|$")
# The rooms that are not a top-level folder of the same name: the client's folder client/ is
# the root of its own distribution, with the package inside.
FOLDERS = {"umarvel_client": "client/umarvel_client"}


def folder(root: Path, room: str) -> Path:
    return root / FOLDERS.get(room, room)


def packages(root: Path) -> set[str]:
    """The packages of the tree: each top-level one, and each of ``FOLDERS`` found."""
    found = {p.parent.name for p in root.glob("*/__init__.py")} - {"tests"} | {"migrations"}
    return found | {room for room in FOLDERS if (folder(root, room) / "__init__.py").exists()}


def allowed_imports(layout: str) -> dict[str, set[str]]:
    """Each room of the layout table and the rooms it may import."""
    rules = {}
    for line in layout.splitlines():
        if match := _ROW.match(line.strip()):
            rules[match.group(1)] = set(re.findall(r"`(\w+)`", match.group(2)))
    return rules


def imported_modules(source: str) -> set[str]:
    """Absolute imports anywhere in ``source`` (function-level ones included)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def violations(root: Path, rules: dict[str, set[str]]) -> list[str]:
    """``file: imports room`` for every import of a room its row does not allow."""
    found = []
    for room, allowed in rules.items():
        for path in sorted(folder(root, room).rglob("*.py")):
            for module in imported_modules(path.read_text()):
                target = module.split(".")[0]
                if target in rules and target != room and target not in allowed:
                    found.append(f"{path.relative_to(root)}: imports {module}")
    return found


def _order(rules: dict[str, set[str]]) -> list[str]:
    """The rooms bottom-up; a cycle in the rules leaves its rooms out."""
    done: list[str] = []
    while len(done) < len(rules):
        ready = [r for r in rules if r not in done and rules[r] <= set(done)]
        if not ready:
            break
        done += sorted(ready)
    return done


def test_the_layout_names_every_package_and_the_rules_have_no_cycle() -> None:
    rules = allowed_imports(LAYOUT.read_text())
    assert set(rules) == packages(ROOT)
    for room, allowed in rules.items():
        assert allowed <= set(rules), f"{room} names an unknown room"
    assert len(_order(rules)) == len(rules), "the rules have a cycle"


def test_no_room_imports_a_room_its_row_does_not_allow() -> None:
    rules = allowed_imports(LAYOUT.read_text())
    assert violations(ROOT, rules) == []


def test_a_planted_upward_import_is_caught(tmp_path: Path) -> None:
    rules = allowed_imports(LAYOUT.read_text())
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "tables.py").write_text("from core.errors import NotFound\n")
    (tmp_path / "store" / "late.py").write_text("def f():\n    from api.app import create_app\n")
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "tasks.py").write_text("import workers.tasks\n")
    assert sorted(violations(tmp_path, rules)) == [
        "api/tasks.py: imports workers.tasks",
        "store/late.py: imports api.app",
    ]
    # A room in a sub-folder is read there, and counts as a package of the tree.
    (tmp_path / "client" / "umarvel_client").mkdir(parents=True)
    (tmp_path / "client" / "umarvel_client" / "__init__.py").write_text("import core.version\n")
    assert "client/umarvel_client/__init__.py: imports core.version" in violations(tmp_path, rules)
    assert "umarvel_client" in packages(tmp_path)
    assert "client" not in packages(tmp_path)
    # A cycle written into the rules is refused too.
    assert len(_order({**rules, "core": {"api"}})) < len(rules)


def test_the_api_process_loads_neither_torch_nor_transformers() -> None:
    probe = "import sys, api.app; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
