"""Launch files (launch_ros is not installable here, so they are checked statically):
every Node executable is one of our console scripts, every DeclareLaunchArgument has a description,
every parameter set in a launch file or in the params file is one the node declares."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
PARAMS_FILE = REPO / "config" / "localization.params.yaml"


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


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            fname = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if fname == name:
                out.append(node)
    return out


def _kw(call: ast.Call, key: str):
    for k in call.keywords:
        if k.arg == key:
            return k.value
    return None


def test_the_launch_files_exist():
    assert {p.name for p in LAUNCH_FILES} >= {
        "localization.launch.py",
        "kitti_replay.launch.py",
        "nav2_localization.launch.py",
    }


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_is_well_formed(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert {"Node", "LaunchDescription"} <= imported

    scripts = _console_scripts()
    declared = _declared_parameters()
    nodes = _calls(tree, "Node")
    assert nodes, f"{path.name} starts no Node"
    for call in nodes:
        package = _kw(call, "package")
        exe = _kw(call, "executable")
        assert isinstance(package, ast.Constant) and isinstance(exe, ast.Constant), f"{path.name}: use literals"
        if package.value != "scmpr_ros":
            known = FOREIGN_NODES.get((package.value, exe.value))
            assert known is not None, f"{path.name}: unexpected node {package.value}/{exe.value}"
        else:
            assert exe.value in scripts, f"{path.name}: {exe.value!r} is not a console script {sorted(scripts)}"
            module = scripts[exe.value].split(":")[0]
            assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{module} does not exist"
            known = declared[exe.value]
        params = _kw(call, "parameters")
        assert isinstance(params, ast.List)
        for item in params.elts:
            if isinstance(item, ast.Dict):
                keys = {ast.literal_eval(k) for k in item.keys}
                unknown = keys - known
                assert not unknown, f"{path.name}: {exe.value} does not declare parameters {unknown}"

    args = _calls(tree, "DeclareLaunchArgument")
    assert args
    names = set()
    for call in args:
        name = call.args[0] if call.args else _kw(call, "name")
        assert isinstance(name, ast.Constant)
        names.add(name.value)
        desc = _kw(call, "description")
        assert isinstance(desc, ast.Constant) and isinstance(desc.value, str) and len(desc.value) > 10, (
            f"{path.name}: launch argument {name.value!r} has no description"
        )
    used = {ast.literal_eval(c.args[0]) for c in _calls(tree, "LaunchConfiguration")}
    assert used <= names, f"{path.name}: LaunchConfiguration of undeclared arguments {used - names}"
    for include in _calls(tree, "PathJoinSubstitution"):
        parts = [e.value for e in include.args[0].elts if isinstance(e, ast.Constant)]
        if parts and parts[0] == "launch":
            assert (REPO / "launch" / parts[-1]).is_file(), f"{path.name} includes missing {parts[-1]}"
        if parts and parts[0] == "config":
            assert (REPO / "config" / parts[-1]).is_file(), f"{path.name} refers to missing {parts[-1]}"


def test_localization_launch_declares_the_documented_arguments():
    tree = ast.parse((REPO / "launch" / "localization.launch.py").read_text())
    names = {c.args[0].value for c in _calls(tree, "DeclareLaunchArgument")}
    assert {"map_file", "model", "image_topic", "device", "use_sim_time"} <= names
    replay = ast.parse((REPO / "launch" / "kitti_replay.launch.py").read_text())
    assert "bag_player" in {_kw(c, "executable").value for c in _calls(replay, "Node")}
    assert {"bag", "record"} <= {c.args[0].value for c in _calls(replay, "DeclareLaunchArgument")}


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


def test_launch_argument_defaults_equal_the_config_dataclasses():
    tree = ast.parse((REPO / "launch" / "localization.launch.py").read_text())
    checked = 0
    for call in _calls(tree, "DeclareLaunchArgument"):
        name, default = call.args[0].value, _kw(call, "default_value")
        if isinstance(default, ast.Constant) and name in ("image_topic", "camera_info_topic", "odom_topic", "device"):
            assert default.value == _default_of(name), f"launch argument {name}: {default.value!r}"
            checked += 1
        elif isinstance(default, ast.Constant) and name == "publish_initialpose":
            assert default.value == str(_default_of(name)).lower()
            checked += 1
    assert checked == 5, "the launch file's node arguments with literal defaults were not all found"


# ------------------------------------------------------------------ Nav2 lifecycle bring-up
def _dict_literal(node: ast.Dict) -> dict:
    """The constant entries of a dict display (values that are calls are left out)."""
    out = {}
    for k, v in zip(node.keys, node.values):
        try:
            out[ast.literal_eval(k)] = ast.literal_eval(v)
        except ValueError:
            out[ast.literal_eval(k)] = v
    return out


def _node_call(tree: ast.AST, executable: str) -> ast.Call:
    calls = [c for c in _calls(tree, "Node") if _kw(c, "executable").value == executable]
    assert len(calls) == 1, f"expected one {executable} node"
    return calls[0]


def test_nav2_launch_brings_up_the_two_managed_nodes():
    nav2 = ast.parse((REPO / "launch" / "nav2_localization.launch.py").read_text())
    manager = _node_call(nav2, "lifecycle_manager")
    assert _kw(manager, "package").value == "nav2_lifecycle_manager"
    params = _dict_literal(_kw(manager, "parameters").elts[0])
    assert params["node_names"] == ["map_server", "localizer"]  # map first: the localizer needs its map
    assert params["bond_timeout"] == 0.0  # rclpy nodes have no bond
    autostart = params["autostart"]
    assert isinstance(autostart, ast.Call) and ast.literal_eval(autostart.args[0].args[0]) == "lifecycle_autostart"
    defaults = {c.args[0].value: _kw(c, "default_value") for c in _calls(nav2, "DeclareLaunchArgument")}
    assert defaults["lifecycle_autostart"].value == "true"
    # the nodes come from localization.launch.py, started with autostart false
    (include,) = _calls(nav2, "IncludeLaunchDescription")
    passed = _dict_literal(_kw(include, "launch_arguments").func.value)
    assert passed["autostart"] == "false"
    assert {"map_file", "model", "params_file", "fastdds_profile", "use_sim_time"} <= set(passed)
    loc = ast.parse((REPO / "launch" / "localization.launch.py").read_text())
    names = {_kw(c, "name").value for c in _calls(loc, "Node")}
    assert names == set(params["node_names"]), "the manager must name the nodes as localization.launch.py does"
    for call in _calls(loc, "Node"):
        node_params = [e for e in _kw(call, "parameters").elts if isinstance(e, ast.Dict)]
        assert "autostart" in _dict_literal(node_params[0]), f"{_kw(call, 'name').value} gets no autostart"
    loc_defaults = {c.args[0].value: _kw(c, "default_value") for c in _calls(loc, "DeclareLaunchArgument")}
    assert loc_defaults["autostart"].value == "true", "plain launches keep the self-starting nodes"


# ------------------------------------------------------------------------ Fast DDS profile
@pytest.mark.parametrize("name", ["localization.launch.py", "kitti_replay.launch.py"])
def test_launch_files_set_the_fastdds_profile_before_their_processes(name):
    tree = ast.parse((REPO / "launch" / name).read_text())
    (arg,) = [c for c in _calls(tree, "DeclareLaunchArgument") if c.args[0].value == "fastdds_profile"]
    parts = [e.value for e in _kw(arg, "default_value").args[0].elts if isinstance(e, ast.Constant)]
    assert parts == ["config", "fastdds_shm.xml"]
    (opaque,) = _calls(tree, "OpaqueFunction")
    assert _kw(opaque, "function").id == "_fastdds_profile"
    ret = [n for n in ast.walk(tree) if isinstance(n, ast.Return) and isinstance(n.value, ast.Call)][-1]
    actions = ret.value.args[0].right.elts  # LaunchDescription(args + [...]): the profile comes first
    assert isinstance(actions[0], ast.Call) and actions[0].func.id == "OpaqueFunction"


class _Recorded:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _Config:
    value = ""

    def __init__(self, name):
        assert name == "fastdds_profile"

    def perform(self, context):
        return _Config.value


def _profile_actions(name: str, profile: str) -> list:
    """Run the launch file's _fastdds_profile with stand-ins for the launch classes (no launch_ros here)."""
    import os

    tree = ast.parse((REPO / "launch" / name).read_text())
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_fastdds_profile")
    namespace = {"os": os, "LaunchConfiguration": _Config, "SetEnvironmentVariable": _Recorded, "LogInfo": _Recorded}
    exec(compile(ast.Module(body=[func], type_ignores=[]), name, "exec"), namespace)
    _Config.value = profile
    return namespace["_fastdds_profile"](None)


@pytest.mark.parametrize("name", ["localization.launch.py", "kitti_replay.launch.py"])
def test_launch_profile_respects_the_user_and_the_rmw(name, monkeypatch):
    profile = str(REPO / "config" / "fastdds_shm.xml")
    for var in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE", "RMW_IMPLEMENTATION"):
        monkeypatch.delenv(var, raising=False)
    actions = _profile_actions(name, profile)
    assert actions[0].args == ("FASTDDS_DEFAULT_PROFILES_FILE", profile)
    assert "shipped shared-memory profile" in actions[1].kwargs["msg"]
    assert len(_profile_actions(name, "")) == 1  # '': Fast DDS defaults, nothing set
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_fastrtps_dynamic_cpp")
    assert _profile_actions(name, profile)[0].args[0] == "FASTDDS_DEFAULT_PROFILES_FILE"
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp")
    (log,) = _profile_actions(name, profile)
    assert "rmw_cyclonedds_cpp" in log.kwargs["msg"]
    monkeypatch.delenv("RMW_IMPLEMENTATION")
    for var in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        monkeypatch.setenv(var, "/etc/my_profile.xml")
        (log,) = _profile_actions(name, profile)
        assert f"{var}=/etc/my_profile.xml" in log.kwargs["msg"] and "user profile" in log.kwargs["msg"]
        monkeypatch.delenv(var)


def test_setup_installs_the_dds_profile():
    text = (REPO / "setup.py").read_text()
    assert 'glob("config/*.xml")' in text
    assert (REPO / "config" / "fastdds_shm.xml").is_file()
