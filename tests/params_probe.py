"""Run one stage module and record every params key it reads (used by test_dependencies.py).

Usage, from a project directory: ``python params_probe.py OUT.json stages.NAME [args...]``.
A read is a leaf attribute access on the params dataclasses made by project code; reads made inside the
modules of ``NOT_OUTPUT_SHAPING`` (parsing, validation, tracking, the stage runner) do not count, since they
cannot change a stage's outputs, nor do reads of the ``mlflow`` section (where runs are logged). Only params that come from the params file count (``config.load`` and
what ``config.replace`` derives from it, not the params a model file carries), and not a value the stage
set itself with ``config.replace`` (an ablation cell's thresholds come from its grid point, not from
``loss.pos_iou``).
"""
import dataclasses
import json
import runpy
import sys
import typing
from pathlib import Path

# Folders (relative to the project) whose reads do not count: parsing and validation, tracking and the stage runner.
NOT_OUTPUT_SHAPING = ("pipeline/config/", "pipeline/tracking/")
TRACKING_SECTION = "mlflow."  # where runs are logged, never what a stage computes


def main() -> None:
    out, module, *argv = sys.argv[1:]
    project = Path.cwd().resolve()
    sys.path.insert(0, str(project))
    from pipeline import config

    code_dirs = (str(project / "pipeline"), str(project / "stages"))
    prefixes: dict[type, str] = {config.Params: ""}

    def walk(cls: type, prefix: str) -> None:
        for name, tp in typing.get_type_hints(cls).items():
            if dataclasses.is_dataclass(tp):
                prefixes[tp] = f"{prefix}{name}."
                walk(tp, f"{prefix}{name}.")

    walk(config.Params, "")
    reads: set[str] = set()

    def reader(frame) -> str | None:
        while frame is not None:
            filename = frame.f_code.co_filename
            if filename.startswith(code_dirs):
                return filename
            frame = frame.f_back
        return None

    def recording_getattribute(self, name):
        value = object.__getattribute__(self, name)
        cls = type(self)
        if (id(self) in tracked and name in cls.__dataclass_fields__ and not dataclasses.is_dataclass(value)
                and name not in overridden.get(id(self), ())):
            filename = reader(sys._getframe(1))
            key = prefixes[cls] + name
            if filename and not Path(filename).relative_to(project).as_posix().startswith(NOT_OUTPUT_SHAPING) and not key.startswith(TRACKING_SECTION):
                reads.add(key)
        return value

    overridden: dict[int, set[str]] = {}
    tracked: set[int] = set()
    alive: list = []  # keeps tracked params alive, so their ids stay theirs
    original_load, original_replace = config.load, config.replace

    def track(params) -> None:
        alive.append(params)
        tracked.add(id(params))
        for f in dataclasses.fields(params):
            value = object.__getattribute__(params, f.name)
            if dataclasses.is_dataclass(value):
                track(value)

    def tracking_load(*args, **kwargs):
        params = original_load(*args, **kwargs)
        track(params)
        return params

    def tracking_replace(params, **dotted):
        new = original_replace(params, **dotted)
        if id(params) not in tracked:
            return new
        track(new)
        for key in dotted:
            *path, leaf = key.split(".")
            node = new
            for part in path:
                node = object.__getattribute__(node, part)
            overridden.setdefault(id(node), set()).add(leaf)
        return new

    config.load, config.replace = tracking_load, tracking_replace
    from pipeline.tracking import stage

    stage.load = tracking_load
    for cls in prefixes:
        cls.__getattribute__ = recording_getattribute
    sys.argv = [module, *argv]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code or 0
    Path(out).write_text(json.dumps({"exit": code, "reads": sorted(reads)}))


if __name__ == "__main__":
    main()
