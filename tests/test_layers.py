"""The README's architecture picture is the layering the code keeps: read from the README, checked on every import.

Each line of the picture that starts with module names is one layer, top first; a module may import modules of
its own layer and of the layers below. Every module of the package is in the picture once.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "directmilter"


def layers() -> list[set[str]]:
    text = (REPO / "README.md").read_text()
    block = text.split("## Architecture", 1)[1].split("```", 2)[1]
    found = []
    for line in block.splitlines():
        names = re.match(r"^((?:[\w]+(?:/|\.py) ?)+)", line)
        if names:
            found.append({name.rstrip("/").removesuffix(".py") for name in names.group(1).split()})
    return found


def unit(path: Path) -> str:
    """The picture's name for a module: its top-level package or module under directmilter/."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported(path: Path) -> set[str]:
    """The picture's names of what a module imports from the package (inside functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "directmilter":
            parts = node.module.split(".")
            names.update([parts[1]] if len(parts) > 1 else [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("directmilter."))
    return names - {"__version__"}


def test_every_module_is_in_the_picture_once() -> None:
    pictured = [name for layer in layers() for name in layer]
    assert len(pictured) == len(set(pictured)), pictured
    modules = {unit(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert set(pictured) == modules


def test_no_import_points_up_the_picture() -> None:
    level = {name: index for index, layer in enumerate(reversed(layers())) for name in layer}
    upward = sorted(f"{path.relative_to(REPO)} imports {name}" for path in PACKAGE.rglob("*.py")
                    if unit(path) != "__init__" for name in imported(path)
                    if name in level and level[name] > level[unit(path)])
    assert upward == []


def test_the_picture_is_read_as_drawn() -> None:
    """A slip in the parsing would make the two tests above vacuous."""
    drawn = layers()
    assert drawn[0] == {"cli", "__main__"} and {"errors", "memo"} <= drawn[-1] and len(drawn) >= 10
    level = {name: index for index, layer in enumerate(reversed(drawn)) for name in layer}
    assert level["milter"] > level["agent"] > level["config"] > level["trust"] > level["cms"] > level["errors"]
