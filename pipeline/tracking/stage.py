"""The shared entry point of every `stages/` script.

Parses ``--params`` and ``--set key=value``, validates the params before any work, checks that the inputs
earlier stages write exist, opens the stage's MLflow run and turns known errors into one line on stderr and a
non-zero exit: 2 for invalid params, 1 for bad data or state (a missing input: what to run first).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from pipeline.config import ConfigError, Params, load
from pipeline.utils.errors import PipelineError

StageMain = Callable[[Params, Any, argparse.Namespace], None]


@dataclass(frozen=True)
class Tracking:
    """Where a stage run is logged: its MLflow experiment (default ``mlflow.experiment``), name and tags."""

    experiment: str | None = None
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    parent: tuple[str, str] | None = None  # (group key, name): nest under the group's parent run


Derive = Callable[[Params, argparse.Namespace], tuple[Params, Tracking]]
Check = Callable[[Params, argparse.Namespace], None]


def run_stage(
    name: str,
    main: StageMain,
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
    derive: Derive | None = None,
    tracked: bool = True,
    check: Check | None = None,
) -> None:
    """Run ``main(params, run, args)``; ``derive`` turns the loaded params and arguments into the
    effective params of this run (e.g. one ablation cell) and where to log it, before tracking starts.
    ``check`` raises :class:`PipelineError` when an input is missing (:func:`pipeline.utils.errors.require`),
    before a run is opened. An untracked command (``tracked=False``) opens no MLflow run and gets ``run=None``."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=main.__doc__)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a param, e.g. --set loss.pos_iou=0.6 (repeatable)",
    )
    if configure:
        configure(parser)
    args = parser.parse_args(argv)
    try:
        params = load(args.params, args.overrides)
        params, tracking = derive(params, args) if derive else (params, Tracking())
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

    run = None
    try:
        if check:
            check(params, args)
        if tracked:
            from pipeline.tracking.run import start_run

            split = getattr(args, "split", None)  # evaluate --split: the role of the prepared data it reads
            run = start_run(params, tracking.run_name or name, tracking.experiment, tracking.tags, tracking.parent,
                            source=name, roles=(split,) if isinstance(split, str) else None)
        main(params, run, args)
    except ConfigError as err:
        _fail(run, f"error: {err}", 2)
    except PipelineError as err:
        _fail(run, f"error: {_own_message(err)}", 1)
    except KeyboardInterrupt:
        _fail(run, "interrupted", 130)
    except BaseException:
        _end(run, "FAILED")
        raise
    _end(run, "FINISHED")


def _own_message(err: PipelineError) -> str:
    """The error's one-line message. A DataLoader worker's error comes back as the same type whose
    message is "Caught PipelineError in DataLoader worker process N." and the worker's traceback,
    which ends with the line "pipeline.utils.errors.PipelineError: <message>"."""
    message = str(err)
    if message.startswith("Caught ") and "\n" in message:
        return message.rstrip().splitlines()[-1].partition(": ")[2]
    return message


def _fail(run: Any, message: str, code: int) -> None:
    _end(run, "FAILED")
    print(message, file=sys.stderr)
    sys.exit(code)


def _end(run: Any, status: str) -> None:
    if run is not None:
        try:
            run.end(status)
        except PipelineError as err:
            print(f"error: {err}", file=sys.stderr)
            if status == "FINISHED":
                sys.exit(1)
