"""What map_server and localizer share as rclpy LifecycleNodes (Nav2 managed nodes).

Transitions follow the ROS 2 managed-node design: a failed on_configure (bad parameter, missing model
or map) returns FAILURE and the node stays unconfigured with the reason logged; an unexpected exception
returns ERROR, so on_error releases everything and the node goes back to unconfigured.  ``autostart``
(default true) configures and activates the node in its constructor, so `scmpr replay`, the tests and
`ros2 run` get a working node at once; the Nav2 launch file sets it false and lets
nav2_lifecycle_manager drive the transitions.
"""

from __future__ import annotations

from collections.abc import Callable

from rclpy.exceptions import NameValidationException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from scmpr_ros.errors import ScmprError

AUTOSTART = "autostart"
#: failures a user can fix (parameters, topic names, files): FAILURE; anything else is an ERROR (on_error runs)
USER_ERRORS = (ScmprError, OSError, ValueError, NameValidationException)


def autostart(node: LifecycleNode) -> None:
    """Configure and activate ``node`` now; when either fails, destroy it and raise ScmprError with the reason."""
    for name, trigger in (("configure", node.trigger_configure), ("activate", node.trigger_activate)):
        if trigger() != TransitionCallbackReturn.SUCCESS:
            reason = getattr(node, "transition_error", "") or "see the log"
            node.destroy_node()
            raise ScmprError(f"{name} failed: {reason}")


def transition_failed(
    node: LifecycleNode, transition: str, exc: BaseException, release: Callable[[], None]
) -> TransitionCallbackReturn:
    """Release what the transition built, record and log the reason, and say which way the node goes:
    FAILURE (back to the state it came from) for a user error, ERROR (on_error, then unconfigured) else."""
    release()
    user = isinstance(exc, USER_ERRORS)
    node.transition_error = str(exc) if user else f"{type(exc).__name__}: {exc}"
    node.get_logger().error(f"{transition} failed: {node.transition_error}")
    return TransitionCallbackReturn.FAILURE if user else TransitionCallbackReturn.ERROR


def state_label(node: LifecycleNode) -> str:
    """unconfigured | inactive | active | finalized (or a transition state's label)."""
    return node._state_machine.current_state[1]


class ReleasingLifecycleNode(LifecycleNode):
    """on_cleanup, on_shutdown and on_error all release what configure / activate built (``_release``)."""

    RELEASED = "everything"  # what _release frees, for the log

    def _release(self) -> None:
        raise NotImplementedError

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info(f"cleaned up: {self.RELEASED} released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        reason = getattr(self, "transition_error", "")
        self.get_logger().error(
            f"error during a transition from {state.label}; {self.RELEASED} released, back to unconfigured"
            + (f": {reason}" if reason else "")
        )
        return TransitionCallbackReturn.SUCCESS
