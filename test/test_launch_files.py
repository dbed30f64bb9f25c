"""Launch files, run against stand-ins for launch and launch_ros (not installable here): every Node
executable is one of our console scripts, every DeclareLaunchArgument has a description, every parameter
set in a launch file or in the params file is one the node declares.

generate_launch_description() of each file is called with the launch / launch_ros modules replaced by
classes that keep what they are built with, so the checks see the description the file really builds,
including what it takes from scmpr_ros.nodes.launch_common."""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
PARAMS_FILE = REPO / "config" / "localization.params.yaml"
HELPER = "scmpr_ros.nodes.launch_common"
LAUNCH_MODULES = (
    "launch",
    "launch.actions",
    "launch.conditions",
    "launch.launch_description_sources",
    "launch.substitutions",
    "launch_ros",
    "launch_ros.actions",
    "launch_ros.descriptions",
    "launch_ros.substitutions",
)


# ------------------------------------------------------------------ stand-ins for launch / launch_ros
class StandIn:
    """A launch or launch_ros class: keeps the arguments it was built with (CREATED lists every one)."""

    CREATED: list[StandIn] = []

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        StandIn.CREATED.append(self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(*{self.args!r}, **{self.kwargs!r})"


class LaunchConfigurationStandIn(StandIn):
    def perform(self, context: dict) -> str:
        return context[self.args[0]]  # the context: launch argument name -> value (KeyError: undeclared)


def _stand_in_modules() -> dict[str, types.ModuleType]:
    """Modules whose every capitalised name is a StandIn subclass of that name (one class per name)."""
    classes: dict[str, type] = {"LaunchConfiguration": type("LaunchConfiguration", (LaunchConfigurationStandIn,), {})}

    def class_named(name: str) -> type:
        if not name[:1].isupper():
            raise AttributeError(name)
        return classes.setdefault(name, type(name, (StandIn,), {}))

    modules = {}
    for name in LAUNCH_MODULES:
        module = types.ModuleType(name)
        module.__getattr__ = class_named
        modules[name] = module
    return modules


@dataclass
class Described:
    """A launch file's generate_launch_description() and every stand-in built while it ran."""

    description: StandIn
    created: list[StandIn]

    @property
    def actions(self) -> list:
        return self.description.args[0]

    def all(self, kind: str) -> list[StandIn]:
        return [e for e in self.created if type(e).__name__ == kind]

    def arguments(self) -> dict[str, StandIn]:
        """The DeclareLaunchArgument actions of the description by name, in their order."""
        declared = [a for a in self.actions if type(a).__name__ == "DeclareLaunchArgument"]
        return {(a.args[0] if a.args else a.kwargs["name"]): a for a in declared}


def describe(paths, monkeypatch: pytest.MonkeyPatch) -> dict[str, Described]:
    """Load each launch file as ros2 launch does (by path) and call its generate_launch_description()."""
    for name, module in _stand_in_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, HELPER, raising=False)  # import it again, against the stand-ins
    described = {}
    try:
        for path in paths:
            loader = importlib.machinery.SourceFileLoader(path.name.replace(".", "_"), str(path))
            module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
            StandIn.CREATED = []
            loader.exec_module(module)
            description = module.generate_launch_description()
            described[path.name] = Described(description, StandIn.CREATED)
    finally:
        StandIn.CREATED = []
        sys.modules.pop(HELPER, None)
    return described


@pytest.fixture(scope="module")
def described() -> dict[str, Described]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        return describe(LAUNCH_FILES, monkeypatch)


def _console_scripts() -> dict[str, str]:
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "console_scripts":
                    entries = [ast.literal_eval(e) for e in v.elts]
                    return {e.split("=")[0].strip(): e.split("=")[1].strip() for e in entries}
    raise AssertionError("setup.py declares no console_scripts")


def _declared_parameters() -> dict[str, set[str]]:
    from scmpr_ros.config import ScmprConfig
    from scmpr_ros.nodes import bag_player, localizer, map_server
    from scmpr_ros.nodes.parameters import parameter_names

    common = {"use_sim_time"}
    managed = {"autostart"}  # lifecycle nodes (nodes/lifecycle.py)
    loc = parameter_names(ScmprConfig(), "nodes", localizer.PARAMETERS, localizer.SECTIONS)
    return {
        "map_server": set(map_server.PARAMETERS) | common | managed,
        "localizer": set(loc) | common | managed,
        "bag_player": set(bag_player.PARAMETERS) | common,
    }


#: nodes of other packages a launch file may start: (package, executable) -> the parameters we set on them
FOREIGN_NODES = {
    ("nav2_lifecycle_manager", "lifecycle_manager"): {"node_names", "autostart", "bond_timeout", "use_sim_time"},
}


def _flatten(params: dict, prefix: str = "") -> dict:
    """ROS params YAML nests dotted names: {"retrieval": {"top_k": 5}} is parameter retrieval.top_k."""
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _kind(entity) -> str:
    return type(entity).__name__


def _plain(value):
    """A comparable form of a description: stand-ins as (class, args, kwargs), mappings as ordered pairs."""
    if isinstance(value, StandIn):
        return (_kind(value), _plain(value.args), _plain(value.kwargs))
    if isinstance(value, dict | type({}.items())):
        return [(key, _plain(item)) for key, item in dict(value).items()]
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, type) or callable(value):
        return f"{value.__module__}.{value.__qualname__}"
    return value


def test_the_launch_files_exist():
    assert {p.name for p in LAUNCH_FILES} >= {
        "localization.launch.py",
        "kitti_replay.launch.py",
        "nav2_localization.launch.py",
    }


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_is_well_formed(path, described):
    tree = ast.parse(path.read_text(), filename=str(path))
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "LaunchDescription" in imported
    launch = described[path.name]
    assert _kind(launch.description) == "LaunchDescription" and isinstance(launch.actions, list)

    scripts = _console_scripts()
    declared = _declared_parameters()
    nodes = launch.all("Node")
    assert nodes, f"{path.name} starts no Node"
    for node in nodes:
        assert any(node is action for action in launch.actions), f"{path.name}: a Node is built but not launched"
        package, exe = node.kwargs["package"], node.kwargs["executable"]
        assert isinstance(package, str) and isinstance(exe, str), f"{path.name}: use literals"
        if package != "scmpr_ros":
            known = FOREIGN_NODES.get((package, exe))
            assert known is not None, f"{path.name}: unexpected node {package}/{exe}"
        else:
            assert exe in scripts, f"{path.name}: {exe!r} is not a console script {sorted(scripts)}"
            module = scripts[exe].split(":")[0]
            assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{module} does not exist"
            known = declared[exe]
        params = node.kwargs["parameters"]
        assert isinstance(params, list)
        for item in params:
            if isinstance(item, dict):
                unknown = set(item) - known
                assert not unknown, f"{path.name}: {exe} does not declare parameters {unknown}"
            else:  # a parameters file: the params_file launch argument
                assert _kind(item) == "LaunchConfiguration" and item.args == ("params_file",), f"{path.name}: {item}"

    args = launch.arguments()
    assert args
    assert len(args) == len(launch.all("DeclareLaunchArgument")), f"{path.name}: an argument declared twice"
    for name, arg in args.items():
        assert isinstance(name, str)
        desc = arg.kwargs.get("description")
        assert isinstance(desc, str) and len(desc) > 10, f"{path.name}: launch argument {name!r} has no description"
    for opaque in launch.all("OpaqueFunction"):  # what they read when they run (KeyError: undeclared)
        opaque.kwargs["function"](dict.fromkeys(args, ""))
    used = {c.args[0] for c in launch.all("LaunchConfiguration")}
    assert used <= set(args), f"{path.name}: LaunchConfiguration of undeclared arguments {used - set(args)}"
    for include in launch.all("PathJoinSubstitution"):
        parts = [e for e in include.args[0] if isinstance(e, str)]
        if parts and parts[0] == "launch":
            assert (REPO / "launch" / parts[-1]).is_file(), f"{path.name} includes missing {parts[-1]}"
        if parts and parts[0] == "config":
            assert (REPO / "config" / parts[-1]).is_file(), f"{path.name} refers to missing {parts[-1]}"
        if parts and parts[0] == "models":
            assert (REPO / "models" / parts[-1]).is_file(), f"{path.name} refers to missing {parts[-1]}"


def test_localization_launch_declares_the_documented_arguments(described):
    names = set(described["localization.launch.py"].arguments())
    assert {"map_file", "model", "image_topic", "device", "use_sim_time"} <= names
    replay = described["kitti_replay.launch.py"]
    assert "bag_player" in {n.kwargs["executable"] for n in replay.all("Node")}
    assert {"bag", "record"} <= set(replay.arguments())


def test_params_file_names_only_declared_parameters():
    data = yaml.safe_load(PARAMS_FILE.read_text())
    declared = _declared_parameters()
    assert set(data) == set(declared)
    for node, body in data.items():
        unknown = set(_flatten(body["ros__parameters"])) - declared[node]
        assert not unknown, f"{PARAMS_FILE.name}: {node} does not declare {unknown}"


def _default_of(name: str):
    from scmpr_ros.config import ScmprConfig

    section, dot, key = name.partition(".")
    return getattr(getattr(ScmprConfig(), section), key) if dot else getattr(ScmprConfig().nodes, name)


def test_params_file_defaults_equal_the_config_dataclasses():
    data = yaml.safe_load(PARAMS_FILE.read_text())
    for node in ("map_server", "localizer"):
        for key, value in _flatten(data[node]["ros__parameters"]).items():
            assert _default_of(key) == value, f"{node}.{key}: params file {value!r} != default {_default_of(key)!r}"


def test_launch_argument_defaults_equal_the_config_dataclasses(described):
    checked = 0
    for name, arg in described["localization.launch.py"].arguments().items():
        default = arg.kwargs.get("default_value")
        if isinstance(default, str) and name in ("image_topic", "camera_info_topic", "odom_topic", "device"):
            assert default == _default_of(name), f"launch argument {name}: {default!r}"
            checked += 1
        elif isinstance(default, str) and name == "publish_initialpose":
            assert default == str(_default_of(name)).lower()
            checked += 1
    assert checked == 5, "the launch file's node arguments with literal defaults were not all found"


# ------------------------------------------------------------------ Nav2 lifecycle bring-up
def _node(launch: Described, executable: str) -> StandIn:
    nodes = [n for n in launch.all("Node") if n.kwargs["executable"] == executable]
    assert len(nodes) == 1, f"expected one {executable} node"
    return nodes[0]


def test_nav2_launch_brings_up_the_two_managed_nodes(described):
    nav2 = described["nav2_localization.launch.py"]
    manager = _node(nav2, "lifecycle_manager")
    assert manager.kwargs["package"] == "nav2_lifecycle_manager"
    params = manager.kwargs["parameters"][0]
    assert params["node_names"] == ["map_server", "localizer"]  # map first: the localizer needs its map
    assert params["bond_timeout"] == 0.0  # rclpy nodes have no bond
    autostart = params["autostart"]
    assert _kind(autostart) == "ParameterValue" and autostart.args[0].args[0] == "lifecycle_autostart"
    assert autostart.kwargs["value_type"] is bool
    defaults = {name: arg.kwargs.get("default_value") for name, arg in nav2.arguments().items()}
    assert defaults["lifecycle_autostart"] == "true"
    # the nodes come from localization.launch.py, started with autostart false
    (include,) = nav2.all("IncludeLaunchDescription")
    passed = dict(include.kwargs["launch_arguments"])
    assert passed["autostart"] == "false"
    assert {"map_file", "model", "params_file", "fastdds_profile", "use_sim_time"} <= set(passed)
    loc = described["localization.launch.py"]
    names = {n.kwargs["name"] for n in loc.all("Node")}
    assert names == set(params["node_names"]), "the manager must name the nodes as localization.launch.py does"
    for node in loc.all("Node"):
        node_params = [e for e in node.kwargs["parameters"] if isinstance(e, dict)]
        assert "autostart" in node_params[0], f"{node.kwargs['name']} gets no autostart"
    assert loc.arguments()["autostart"].kwargs["default_value"] == "true", "plain launches keep the self-starting nodes"


def test_includes_pass_on_arguments_as_localization_launch_declares_them(described):
    """An included file ignores an argument it does not declare; one declared again here says the same."""
    loc = described["localization.launch.py"].arguments()
    for name in ("kitti_replay.launch.py", "nav2_localization.launch.py"):
        launch = described[name]
        (include,) = launch.all("IncludeLaunchDescription")
        (source,) = include.args
        assert [e for e in source.args[0].args[0] if isinstance(e, str)] == ["launch", "localization.launch.py"]
        passed = dict(include.kwargs["launch_arguments"])
        assert set(passed) <= set(loc), f"{name} passes undeclared {set(passed) - set(loc)}"
        for arg, value in passed.items():
            if _kind(value) == "LaunchConfiguration":
                assert value.args == (arg,), f"{name}: {arg} gets {value.args}"
    nav2 = described["nav2_localization.launch.py"].arguments()
    for arg in set(nav2) - {"lifecycle_autostart"}:
        assert _plain(nav2[arg]) == _plain(loc[arg]), f"nav2_localization.launch.py declares {arg} differently"


# ------------------------------------------------------------------------ Fast DDS profile
@pytest.mark.parametrize("name", ["localization.launch.py", "kitti_replay.launch.py"])
def test_launch_files_set_the_fastdds_profile_before_their_processes(name, described):
    launch = described[name]
    default = launch.arguments()["fastdds_profile"].kwargs["default_value"]
    assert _kind(default) == "PathJoinSubstitution"
    assert [e for e in default.args[0] if isinstance(e, str)] == ["config", "fastdds_shm.xml"]
    (opaque,) = launch.all("OpaqueFunction")
    function = opaque.kwargs["function"]
    assert (function.__module__, function.__name__) == (HELPER, "_set_fastdds_profile")
    first = len(launch.arguments())  # LaunchDescription(args + [...]): the profile comes first
    assert all(_kind(a) == "DeclareLaunchArgument" for a in launch.actions[:first])
    assert launch.actions[first] is opaque


def _profile_actions(launch: Described, profile: str) -> list:
    """Run the launch file's Fast DDS OpaqueFunction with fastdds_profile:=profile."""
    (opaque,) = launch.all("OpaqueFunction")
    return opaque.kwargs["function"]({"fastdds_profile": profile})


@pytest.mark.parametrize("name", ["localization.launch.py", "kitti_replay.launch.py"])
def test_launch_profile_respects_the_user_and_the_rmw(name, described, monkeypatch):
    launch = described[name]
    profile = str(REPO / "config" / "fastdds_shm.xml")
    for var in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION"):
        monkeypatch.delenv(var, raising=False)
    actions = _profile_actions(launch, profile)
    assert _kind(actions[0]) == "SetEnvironmentVariable" and _kind(actions[1]) == "LogInfo"
    assert actions[0].args == ("FASTDDS_DEFAULT_PROFILES_FILE", profile)
    assert "shipped shared-memory profile" in actions[1].kwargs["msg"]
    assert len(_profile_actions(launch, "")) == 1  # '': Fast DDS defaults, nothing set
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_fastrtps_dynamic_cpp")
    assert _profile_actions(launch, profile)[0].args[0] == "FASTDDS_DEFAULT_PROFILES_FILE"
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp")
    (log,) = _profile_actions(launch, profile)
    assert "rmw_cyclonedds_cpp" in log.kwargs["msg"]
    monkeypatch.delenv("RMW_IMPLEMENTATION")
    for var in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        monkeypatch.setenv(var, "/etc/my_profile.xml")
        (log,) = _profile_actions(launch, profile)
        assert f"{var}=/etc/my_profile.xml" in log.kwargs["msg"] and "user profile" in log.kwargs["msg"]
        monkeypatch.delenv(var)


def test_setup_installs_the_dds_profile():
    text = (REPO / "setup.py").read_text()
    assert 'glob("config/*.xml")' in text
    assert (REPO / "config" / "fastdds_shm.xml").is_file()
