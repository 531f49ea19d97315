"""Apply a preset: merge the overlay ``configs/NAME.yaml`` (only what differs from params.yaml) into params.yaml.

    python -m stages.preset configs/yolact550_r50_coco.yaml [--set data.root=/datasets/coco] [--force]

Then ``dvc repro`` or ``dvc exp run`` run with it as with any edit of params.yaml (docs/parameters-and-presets.md
says why a merge into params.yaml and not DVC's Hydra composition, which composes only under ``dvc exp run``).
The keys of params.yaml that the preset does not state keep their value and their comment. It refuses to touch
a params.yaml with uncommitted changes (they would be mixed in silently) unless ``--force``, and writes nothing
when the merged params are invalid. Not a DVC stage.
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

PARAMS = Path("params.yaml")


def uncommitted(path: Path) -> bool:
    """Whether git reports changes to ``path`` (False outside a git repository)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", str(path)], capture_output=True, text=True,
                             timeout=30)
    except OSError:
        return False
    return out.returncode == 0 and bool(out.stdout.strip())


def merge_into(target, overlay, cls) -> None:
    """``overlay`` into the round-trip map ``target`` in place, as :func:`pipeline.config.merge` merges."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for key, value in overlay.items():
        tp = hints.get(key)
        if tp is not None and dataclasses.is_dataclass(tp) and isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_into(target[key], value, tp)
        else:
            target[key] = value


def apply(preset: Path, params_path: Path = PARAMS, overrides: tuple[str, ...] = ()) -> str:
    """The text of ``params_path`` with ``preset`` and ``overrides`` merged in, validated (raises ConfigError)."""
    import yaml
    from ruamel.yaml import YAML

    from pipeline.config import BASE_KEY, Params, from_dict, read_raw, validate
    from pipeline.config.loader import _apply_override

    rt = YAML()
    rt.width = 4096
    rt.preserve_quotes = True
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    document = rt.load(params_path.read_text())
    read_raw(preset)  # a readable mapping (ConfigError naming the file otherwise)
    overlay = rt.load(preset.read_text())
    overlay.pop(BASE_KEY, None)
    merge_into(document, overlay, Params)
    for override in overrides:
        key, _, value = override.partition("=")
        merge_into(document, _nest(key.strip().split("."), yaml.safe_load(value)), Params)
        _apply_override({}, override)  # the same syntax check as --set of a stage
    buffer = io.StringIO()
    rt.dump(document, buffer)
    text = buffer.getvalue()
    validate(from_dict(yaml.safe_load(text)))
    return text


def _nest(parts: list[str], value):
    return {parts[0]: value} if len(parts) == 1 else {parts[0]: _nest(parts[1:], value)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.preset", description=__doc__.splitlines()[0])
    parser.add_argument("preset", type=Path, help="a preset overlay, e.g. configs/yolact550_r50_coco.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="also set a param, e.g. --set data.root=/datasets/coco (repeatable)")
    parser.add_argument("--force", action="store_true", help="merge even into a params.yaml with uncommitted changes")
    parser.add_argument("--params", type=Path, default=PARAMS, help="the params file to write (default: params.yaml)")
    args = parser.parse_args(argv)
    from pipeline.config import ConfigError

    if not args.force and uncommitted(args.params):
        print(f"error: {args.params} has uncommitted changes; commit them or `git checkout {args.params}` first, "
              "or pass --force to merge the preset on top of them", file=sys.stderr)
        return 1
    try:
        text = apply(args.preset, args.params, tuple(args.overrides))
    except ConfigError as err:
        print(f"error: {err} (nothing written; fix it with --set KEY=VALUE)", file=sys.stderr)
        return 2
    args.params.write_text(text)
    print(f"{args.params}: merged {args.preset}; `git diff {args.params}` shows what changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
