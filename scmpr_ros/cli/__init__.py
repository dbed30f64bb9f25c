"""The ``scmpr`` command line: one entry point, one subcommand per task.

Each group of subcommands lives in ``scmpr_ros/commands/<group>.py`` and exposes
``register(app, benchmark_app)``.  Heavy imports (torch, open3d, rclpy) happen inside the
command functions so that ``scmpr --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

COMMAND_MODULES = (
    "scmpr_ros.cli.data",  # synth, dataset-info, kitti-to-bag
    "scmpr_ros.cli.maps",  # build-map, map-info, train-segmenter
    "scmpr_ros.cli.learn",  # train, evaluate, ablation
    "scmpr_ros.cli.ros",  # replay, demo
    "scmpr_ros.cli.bench",  # benchmark encoder|scan|search|ros|all
)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="scmpr",
        help="SCM-PR cross-modal place recognition: data, maps, training, evaluation, ROS replay, benchmarks.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    benchmark_app = typer.Typer(
        help="Speed measurements (ratios against a baseline run side by side).", no_args_is_help=True
    )
    app.add_typer(benchmark_app, name="benchmark")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # group not written yet
                continue
            raise
        module.register(app, benchmark_app)
    return app


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; usage errors exit 2 with typer's message, user-facing errors print one line."""
    from scmpr_ros.errors import ScmprError

    app = build_app()
    try:
        app(args=argv, prog_name="scmpr")  # standalone mode: typer reports usage errors itself
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (ScmprError, OSError) as exc:  # user-facing boundary: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
