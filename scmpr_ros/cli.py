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
    "scmpr_ros.commands.data",  # synth, dataset-info, kitti-to-bag
    "scmpr_ros.commands.maps",  # build-map, map-info, train-segmenter
    "scmpr_ros.commands.learn",  # train, evaluate, ablation
    "scmpr_ros.commands.ros",  # replay, demo
    "scmpr_ros.commands.bench",  # benchmark encoder|scan|search|ros|all
)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="scmpr",
        help="SCM-PR cross-modal place recognition: data, maps, training, evaluation, ROS replay, benchmarks.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    benchmark_app = typer.Typer(help="Speed measurements (ratios against a baseline run side by side).", no_args_is_help=True)
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
    app = build_app()
    try:
        app(args=argv, standalone_mode=False)
    except SystemExit as exc:  # typer/click exits
        return int(exc.code or 0)
    except Exception as exc:  # noqa: BLE001 - user-facing boundary: one line, no traceback
        from scmpr_ros.errors import ScmprError

        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            return 1
        if isinstance(exc, (ScmprError, FileNotFoundError, ValueError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
