"""The package's layering, read from every module's imports with ``ast`` (docs/ARCHITECTURE.md).

A unit is a top-level module or sub-package of ``scmpr_ros``.  A unit may import only units on a
lower tier (or itself); units on one tier are peers and do not import each other.  Every import
counts, at module level or inside a function.  Only ``nodes/`` imports rclpy and the ROS
message packages' node APIs; only the tiers that hold networks import torch at module level.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "scmpr_ros"

# Bottom up; the same list is drawn in docs/ARCHITECTURE.md.
TIERS: list[tuple[str, ...]] = [
    ("errors", "io_utils"),
    ("config", "geometry"),
    ("semantics",),
    ("datasets", "lidar", "model"),
    ("mapping", "retrieval"),
    ("localization",),
    ("training",),
    ("evaluation",),
    ("msgs",),
    ("bags",),
    ("nodes",),
    ("benchmarks", "demo"),
    ("cli",),
]
TIER_OF = {unit: level for level, units in enumerate(TIERS) for unit in units}
ROS_ONLY_IN = {"nodes"}
TORCH_AT_MODULE_LEVEL_IN = {"model", "training", "localization", "benchmarks"}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _unit_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import statement."""
    top_level = {id(node) for node in getattr(tree, "body", [])}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno, id(node) in top_level))
    return found


def _all_imports():
    for path in _modules():
        if _unit_of(path) == "__init__":
            continue
        for module, line, top in _imports(ast.parse(path.read_text(), filename=str(path))):
            yield path, _unit_of(path), module, line, top


def test_every_unit_has_a_tier():
    units = {_unit_of(p) for p in _modules()} - {"__init__"}
    assert units <= set(TIER_OF), f"give these units a tier in TIERS and docs/ARCHITECTURE.md: {units - set(TIER_OF)}"


def test_imports_only_point_down():
    wrong = []
    for path, unit, module, line, _top in _all_imports():
        parts = module.split(".")
        if parts[0] != "scmpr_ros" or len(parts) < 2 or parts[1] == unit:
            continue
        target = parts[1]
        if TIER_OF.get(target, -1) >= TIER_OF[unit]:
            wrong.append(
                f"{path.relative_to(PACKAGE.parent)}:{line} {unit} (tier {TIER_OF[unit]}) imports {module} "
                f"(tier {TIER_OF.get(target)})"
            )
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_rclpy_only_in_nodes():
    wrong = [
        f"{p.relative_to(PACKAGE.parent)}:{line} imports {m}"
        for p, unit, m, line, _ in _all_imports()
        if m.split(".")[0] in ("rclpy", "launch", "launch_ros") and unit not in ROS_ONLY_IN
    ]
    assert not wrong, "rclpy outside scmpr_ros/nodes:\n" + "\n".join(wrong)


def test_torch_at_module_level_only_where_networks_live():
    wrong = [
        f"{p.relative_to(PACKAGE.parent)}:{line}"
        for p, unit, m, line, top in _all_imports()
        if top and m.split(".")[0] == "torch" and unit not in TORCH_AT_MODULE_LEVEL_IN
    ]
    assert not wrong, (
        "module-level torch import outside " + ", ".join(sorted(TORCH_AT_MODULE_LEVEL_IN)) + ":\n" + "\n".join(wrong)
    )


def test_the_checker_sees_an_upward_import(tmp_path):
    """The checker itself can fail: an upward import in a parsed snippet is found."""
    tree = ast.parse("import os\ndef f():\n    from scmpr_ros.nodes.localizer import Localizer\n")
    found = _imports(tree)
    assert ("scmpr_ros.nodes.localizer", 3, False) in found and ("os", 1, True) in found
    assert TIER_OF["nodes"] > TIER_OF["lidar"]
