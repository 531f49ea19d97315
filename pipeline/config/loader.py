"""Reading ``params.yaml`` and preset overlays into typed :class:`Params`: parse, merge, override, build, validate.

A preset (``configs/*.yaml``) states only what differs from ``params.yaml``: its key ``_base_`` names the file
it overlays (``../params.yaml``, relative to the preset). :func:`load` merges an overlay onto its base first,
section by section as :class:`Params` nests them (a value that is not a section, a list or a mapping such as
``ablation.scale_sets``, replaces the base's whole), so ``load("configs/X.yaml")`` gives what
``python -m stages.preset configs/X.yaml`` writes into ``params.yaml``.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.config.schema import ConfigError, Params, to_dict
from pipeline.config.validation import validate

BASE_KEY = "_base_"  # in a preset: the params file it overlays, relative to the preset


def load(path: str | Path = "params.yaml", overrides: typing.Iterable[str] = ()) -> Params:
    """Read, override and validate ``params.yaml`` (or a preset overlay, merged onto its base first).

    ``overrides`` are DVC-style ``"loss.pos_iou=0.6"`` strings; values are parsed as YAML. Relative paths in
    the params (``data.root``, weight files) are taken from the working directory, the repository root where
    the stages run, wherever ``path`` lies (:func:`pipeline.config.params_path`).
    """
    raw = read_raw(Path(path))
    for override in overrides:
        _apply_override(raw, override)
    params = from_dict(raw)
    validate(params)
    return params


def read_raw(path: Path) -> dict[str, Any]:
    """The params of ``path`` as a nested dict, an overlay merged onto its ``_base_`` (recursively)."""
    raw = _read_yaml(path)
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(BASE_KEY, f"must be the path of the params file this one overlays, got {base!r}")
    return merge(read_raw(path.parent / base), raw)


def merge(base: dict[str, Any], overlay: dict[str, Any], cls: type = Params) -> dict[str, Any]:
    """``overlay`` onto ``base``: sections (dataclasses of :class:`Params`) merge key by key, any other value
    (a number, a list, a mapping such as ``ablation.scale_sets``) replaces the base's."""
    out = dict(base)
    hints = typing.get_type_hints(cls)
    for key, value in overlay.items():
        tp = hints.get(key)
        if tp is not None and dataclasses.is_dataclass(tp) and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value, tp)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(str(path), "file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(str(path), f"not valid YAML ({err})".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "top level must be a mapping")
    return raw


def from_dict(raw: dict[str, Any]) -> Params:
    """Build :class:`Params` from a nested dict, checking keys and types (no cross-field checks)."""
    return _build(Params, raw, "")


def replace(params: Params, **dotted: Any) -> Params:
    """A copy of ``params`` with dotted keys replaced and re-validated, e.g. ``{"loss.pos_iou": 0.6}``."""
    raw = to_dict(params)
    for key, value in dotted.items():
        _set(raw, key.split("."), value, key)
    new = from_dict(raw)
    validate(new)
    return new


def _apply_override(raw: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(override, "override must look like key=value")
    _set(raw, key.strip().split("."), yaml.safe_load(text), key.strip())


def _set(raw: dict, parts: list[str], value: Any, key: str) -> None:
    node = raw
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(key, f"'{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "params"
    if not isinstance(raw, dict):
        raise ConfigError(where, f"expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in hints:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(dotted, f"unknown key{hint}")
        kwargs[key] = _coerce(hints[key], value, dotted)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, {} if value is None else value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, f"must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list, got {_describe(value)}")
        return [_coerce(args[0], item, f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not value:
            raise ConfigError(key, f"expected a non-empty mapping, got {_describe(value)}")
        return {str(k): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported parameter type {tp} for {key}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"
