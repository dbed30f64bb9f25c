"""map_server and localizer as managed (lifecycle) nodes, driven over loopback DDS through their
lifecycle services, as nav2_lifecycle_manager does: <node>/change_state and <node>/get_state."""

from __future__ import annotations

import time

import pytest

rclpy = pytest.importorskip("rclpy")
pytest.importorskip("torch")
from lifecycle_msgs.msg import State, Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.msg import Log  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_helpers import Spinner, build_test_world, call_service, ros_context, unique_namespace, wait_for  # noqa: E402
from test_ros_localizer import Sink, start_localizer  # noqa: E402

from scmpr_ros.errors import ScmprError  # noqa: E402
from scmpr_ros.msgs.conversions import read_hypotheses, rgb_to_image_msg  # noqa: E402
from scmpr_ros.nodes.localizer import Localizer  # noqa: E402
from scmpr_ros.nodes.map_server import MapServer  # noqa: E402

pytestmark = pytest.mark.ros

LABELS = {
    State.PRIMARY_STATE_UNCONFIGURED: "unconfigured",
    State.PRIMARY_STATE_INACTIVE: "inactive",
    State.PRIMARY_STATE_ACTIVE: "active",
    State.PRIMARY_STATE_FINALIZED: "finalized",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_test_world(tmp_path_factory.mktemp("lifecycle"))


class Manager:
    """What a lifecycle manager does: call <node>/change_state and <node>/get_state."""

    def __init__(self, node, ns):
        self.node, self.ns = node, ns

    def state(self, name: str) -> str:
        res = call_service(self.node, GetState, f"{self.ns}/{name}/get_state")
        assert LABELS[res.current_state.id] == res.current_state.label
        return res.current_state.label

    def change(self, name: str, transition: int) -> bool:
        req = ChangeState.Request()
        req.transition.id = transition
        return call_service(self.node, ChangeState, f"{self.ns}/{name}/change_state", req, timeout=30.0).success


def _rosout(sink) -> list[Log]:
    logs: list[Log] = []
    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    sink.node.create_subscription(Log, "/rosout", logs.append, qos)
    return logs


def _no_outputs_while_sending(sink, images, stamp: int, seconds: float) -> bool:
    """Publish images for ``seconds``; True when none of them got an answer."""
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        sink.pub.publish(rgb_to_image_msg(images[1], stamp + i, "camera"))
        i += 1
        time.sleep(0.1)
    time.sleep(0.5)
    return not any(stamp <= s < stamp + i for s in sink.poses)


def test_nav2_style_bringup_and_all_transitions(world):
    """unconfigured -> configure -> inactive (no outputs) -> activate -> active (outputs) -> deactivate ->
    inactive (no outputs) -> cleanup -> unconfigured -> configure/activate again -> shutdown -> finalized."""
    ckpt, map_path, images, _ = world
    ns = unique_namespace()
    with ros_context() as ctx:
        spin = Spinner(ctx)
        try:
            off = Parameter("autostart", value=False)
            server = spin.add(
                MapServer(
                    context=ctx,
                    namespace=ns,
                    parameter_overrides=[Parameter("map_file", value=str(map_path)), off],
                )
            )
            loc = spin.add(start_localizer(ctx, ns, ckpt, autostart=False))
            sink = Sink(ctx, ns)
            spin.add(sink.node)
            mgr = Manager(sink.node, ns)
            assert mgr.state("map_server") == "unconfigured" and mgr.state("localizer") == "unconfigured"
            assert loc.model is None and server.announcement is None
            # nav2_lifecycle_manager order: configure all, then activate all
            assert mgr.change("map_server", Transition.TRANSITION_CONFIGURE)
            assert mgr.change("localizer", Transition.TRANSITION_CONFIGURE)
            assert mgr.state("map_server") == "inactive" and mgr.state("localizer") == "inactive"
            assert loc.model is not None and server.announcement is not None
            assert _no_outputs_while_sending(sink, images, 1000, 1.5) and loc.received == 0
            assert mgr.change("map_server", Transition.TRANSITION_ACTIVATE)
            assert mgr.change("localizer", Transition.TRANSITION_ACTIVATE)
            assert mgr.state("localizer") == "active"
            assert wait_for(lambda: loc.active is not None, 20.0), loc.map_status  # the latched map, now published
            assert sink.send_until_done(rgb_to_image_msg(images[6], 2000, "camera"))
            assert read_hypotheses(sink.scores[2000])["viewpoint_id"][0] == 506
            assert wait_for(lambda: len(sink.diag) > 0, 5.0)

            assert mgr.change("localizer", Transition.TRANSITION_DEACTIVATE)
            assert mgr.state("localizer") == "inactive"
            received, n_diag = loc.received, len(sink.diag)
            assert _no_outputs_while_sending(sink, images, 3000, 1.5)
            assert loc.received == received and len(sink.diag) <= n_diag + 1  # no subscription, no diagnostics

            assert mgr.change("localizer", Transition.TRANSITION_CLEANUP)
            assert mgr.state("localizer") == "unconfigured"
            assert loc.model is None and loc.active is None
            assert mgr.change("localizer", Transition.TRANSITION_CONFIGURE)
            assert mgr.change("localizer", Transition.TRANSITION_ACTIVATE)
            assert wait_for(lambda: loc.active is not None, 20.0), loc.map_status
            assert sink.send_until_done(rgb_to_image_msg(images[8], 4000, "camera"))
            assert read_hypotheses(sink.scores[4000])["viewpoint_id"][0] == 508

            assert mgr.change("localizer", Transition.TRANSITION_ACTIVE_SHUTDOWN)
            assert mgr.change("map_server", Transition.TRANSITION_ACTIVE_SHUTDOWN)
            assert mgr.state("localizer") == "finalized" and mgr.state("map_server") == "finalized"
            assert loc.model is None and server.announcement is None
        finally:
            spin.close()


def test_failed_configure_stays_unconfigured_with_the_reason_then_succeeds(world, tmp_path):
    ckpt, map_path, images, _ = world
    missing_model = tmp_path / "no_such_model.safetensors"
    ns = unique_namespace()
    with ros_context() as ctx:
        spin = Spinner(ctx)
        try:
            off = Parameter("autostart", value=False)
            server = spin.add(
                MapServer(
                    context=ctx,
                    namespace=ns,
                    parameter_overrides=[Parameter("map_file", value=str(tmp_path / "missing.scmpr-map")), off],
                )
            )
            loc = spin.add(start_localizer(ctx, ns, missing_model, autostart=False))
            sink = Sink(ctx, ns)
            logs = _rosout(sink)
            spin.add(sink.node)
            mgr = Manager(sink.node, ns)
            time.sleep(0.5)  # /rosout matched
            assert not mgr.change("localizer", Transition.TRANSITION_CONFIGURE)
            assert mgr.state("localizer") == "unconfigured" and loc.model is None
            assert str(missing_model) in loc.transition_error
            assert wait_for(
                lambda: any(
                    m.name.endswith("localizer") and m.level == Log.ERROR and str(missing_model) in m.msg for m in logs
                ),
                5.0,
            ), [m.msg for m in logs]
            assert not mgr.change("map_server", Transition.TRANSITION_CONFIGURE)
            assert mgr.state("map_server") == "unconfigured" and "does not exist" in server.transition_error

            for name, key, value in (("localizer", "model", ckpt), ("map_server", "map_file", map_path)):
                req = SetParameters.Request()  # as `ros2 param set` does
                req.parameters = [ParameterMsg(name=key, value=Parameter(key, value=str(value)).get_parameter_value())]
                res = call_service(sink.node, SetParameters, f"{ns}/{name}/set_parameters", req)
                assert res.results[0].successful, res.results[0].reason
                assert mgr.change(name, Transition.TRANSITION_CONFIGURE), name
                assert mgr.change(name, Transition.TRANSITION_ACTIVATE), name
                assert mgr.state(name) == "active"
            assert loc.transition_error == "" and server.transition_error == ""
            assert wait_for(lambda: loc.active is not None, 20.0), loc.map_status
            assert sink.send_until_done(rgb_to_image_msg(images[0], 5000, "camera"))
        finally:
            spin.close()


def test_unexpected_error_goes_through_on_error_back_to_unconfigured(world, monkeypatch):
    import scmpr_ros.nodes.localizer as localizer_module

    ckpt, _, _, _ = world
    ns = unique_namespace()

    def broken(*args, **kwargs):
        raise RuntimeError("simulated driver crash")

    with ros_context() as ctx:
        spin = Spinner(ctx)
        try:
            loc = spin.add(start_localizer(ctx, ns, ckpt, autostart=False))
            sink = Sink(ctx, ns)
            logs = _rosout(sink)
            spin.add(sink.node)
            mgr = Manager(sink.node, ns)
            time.sleep(0.5)
            monkeypatch.setattr(localizer_module, "load_model", broken)
            assert not mgr.change("localizer", Transition.TRANSITION_CONFIGURE)
            assert mgr.state("localizer") == "unconfigured"
            assert wait_for(
                lambda: any("back to unconfigured" in m.msg and "simulated driver crash" in m.msg for m in logs), 5.0
            ), [m.msg for m in logs]
            monkeypatch.undo()
            assert mgr.change("localizer", Transition.TRANSITION_CONFIGURE)
            assert mgr.state("localizer") == "inactive" and loc.model is not None
            # an activate that fails (no valid topic to subscribe to) stays inactive, with the reason
            loc.set_parameters([Parameter("image_topic", value="not a topic!")])
            assert not mgr.change("localizer", Transition.TRANSITION_ACTIVATE)
            assert mgr.state("localizer") == "inactive" and "not a topic!" in loc.transition_error
            loc.set_parameters([Parameter("image_topic", value="camera/image_raw")])
            assert mgr.change("localizer", Transition.TRANSITION_ACTIVATE)
            assert mgr.state("localizer") == "active"
        finally:
            spin.close()


def test_autostart_failure_raises_like_a_plain_node(world, tmp_path):
    """autostart (the default): the constructor configures + activates, and a failure is an exception
    (run_node_main prints it and exits 2, `scmpr replay` reports it), as before the nodes were managed."""
    ckpt, _, _, _ = world
    ns = unique_namespace()
    with ros_context() as ctx:
        with pytest.raises(ScmprError, match="configure failed: .*no_model"):
            start_localizer(ctx, ns, tmp_path / "no_model.pt")
        with pytest.raises(ScmprError, match="does not exist"):
            MapServer(context=ctx, namespace=ns, parameter_overrides=[Parameter("map_file", value="/nonexistent.map")])
        loc = Localizer(
            context=ctx,
            namespace=ns,
            parameter_overrides=[Parameter("model", value=str(ckpt)), Parameter("threads", value=1)],
        )
        try:
            from scmpr_ros.nodes.lifecycle import state_label

            assert state_label(loc) == "active" and loc.model is not None
        finally:
            loc.destroy_node()


def test_console_script_is_managed_over_dds(world):
    """The map_server console script (run_node_main, EventsExecutor) with autostart:=false, driven from
    another process as nav2_lifecycle_manager would: the map is announced only once active."""
    import os
    import signal
    import subprocess
    import sys

    from std_msgs.msg import String

    from scmpr_ros.msgs.topics import MAP_TOPIC
    from scmpr_ros.nodes.qos import LATCHED_QOS

    _, map_path, _, _ = world
    ns = unique_namespace()
    cmd = [sys.executable, "-m", "scmpr_ros.nodes.map_server", "--ros-args", "-r", f"__ns:={ns}"]
    cmd += ["-p", "autostart:=false", "-p", f"map_file:={map_path}"]
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with ros_context() as ctx:
            spin = Spinner(ctx)
            try:
                node = spin.add(rclpy.create_node("manager", context=ctx, namespace=ns))
                announced: list[String] = []
                node.create_subscription(String, MAP_TOPIC, announced.append, LATCHED_QOS)
                mgr = Manager(node, ns)
                assert mgr.state("map_server") == "unconfigured"
                assert mgr.change("map_server", Transition.TRANSITION_CONFIGURE)
                assert mgr.state("map_server") == "inactive"
                assert not wait_for(lambda: announced, 1.0)
                assert mgr.change("map_server", Transition.TRANSITION_ACTIVATE)
                assert wait_for(lambda: announced, 10.0) and str(map_path) in announced[-1].data
                for transition, label in (
                    (Transition.TRANSITION_DEACTIVATE, "inactive"),
                    (Transition.TRANSITION_CLEANUP, "unconfigured"),
                    (Transition.TRANSITION_UNCONFIGURED_SHUTDOWN, "finalized"),
                ):
                    assert mgr.change("map_server", transition) and mgr.state("map_server") == label
            finally:
                spin.close()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert "active: map v1 published" in out and "cleaned up: map released" in out
