"""ROS parameters from the typed config: declared from the dataclasses, read back into them, checked.

A node's own settings are declared flat (``image_topic``); library sections as dotted names
(``retrieval.top_k``), as kiss-icp does.  Defaults come from ``load_config()`` (dataclass defaults +
site overrides), so no default is written twice.  A value set at run time is checked with the same
rules as a YAML file (type, LIMITS) and refused with the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node

from scmpr_ros.config import ConfigError, ScmprConfig, config_from_dict


def parameter_names(cfg: ScmprConfig, flat: str, keys: Iterable[str], sections: Iterable[str] = ()) -> list[str]:
    """ROS names: ``keys`` of section ``flat`` as they are, every key of ``sections`` as section.key."""
    names = list(keys)
    for section in sections:
        names += [f"{section}.{f.name}" for f in dataclasses.fields(getattr(cfg, section))]
    return names


def _section_key(name: str, flat: str) -> tuple[str, str]:
    section, dot, key = name.partition(".")
    return (section, key) if dot else (flat, name)


def declare_config_parameters(node: Node, cfg: ScmprConfig, flat: str, names: list[str]) -> None:
    for name in names:
        section, key = _section_key(name, flat)
        node.declare_parameter(name, getattr(getattr(cfg, section), key))


def config_from_parameters(node: Node, cfg: ScmprConfig, flat: str, names: list[str]) -> ScmprConfig:
    """The declared parameters' current values, strictly checked, applied to ``cfg``."""
    return _apply(cfg, flat, {n: node.get_parameter(n).value for n in names}, f"node {node.get_name()}")


def _apply(cfg: ScmprConfig, flat: str, values: dict[str, Any], source: str) -> ScmprConfig:
    nested: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        section, key = _section_key(name, flat)
        nested.setdefault(section, {})[key] = list(value) if isinstance(value, (tuple, list)) else value
    return config_from_dict(nested, cfg, source)


def add_config_validator(
    node: Node, flat: str, names: list[str], current: Callable[[], ScmprConfig], apply: Callable[[ScmprConfig], None]
) -> None:
    """Refuse a run-time parameter change that the config would refuse; hand an accepted one to ``apply``."""
    known = set(names)

    def on_set(params) -> SetParametersResult:
        ours = {p.name: p.value for p in params if p.name in known}
        if not ours:
            return SetParametersResult(successful=True)
        try:
            updated = _apply(current(), flat, ours, "parameter update")
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        apply(updated)
        return SetParametersResult(successful=True)

    node.add_on_set_parameters_callback(on_set)
