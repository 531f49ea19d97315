"""Where things are: the code's repository root (computed from this file's depth in the package) and the paths
in the params (taken from the working directory, where DVC runs the stages)."""
from __future__ import annotations

from pathlib import Path


PACKAGE_DIR = Path(__file__).resolve().parents[1]  # pipeline/: this file is pipeline/config/paths.py
REPO_ROOT = PACKAGE_DIR.parent
WEIGHTS_DIR = "weights"  # local weight files (model.backbone.pretrained, model.init_from); a dep of training
PRETRAINED_BY_STAGE = "pretrain"  # model.backbone.pretrained: the weights the pretrain stage writes
PRETRAIN_WEIGHTS = "models/pretrain/backbone.pt"  # where it writes them (a DVC output, not a file under weights/)


def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else base_dir / p


def resolve_path(path: str, base_dir: Path = REPO_ROOT) -> Path:
    """A path of the code's own repository (a benchmark's arguments), relative paths taken from its root."""
    return _resolve(path, base_dir)


def params_path(value: str, base_dir: Path | None = None) -> Path:
    """A path in the params (``data.root``, a weights file), relative ones taken from ``base_dir``; by default
    left relative, so taken from the working directory: the repository root, where DVC runs every stage and
    the stages write ``data/``, ``models/`` and ``reports/``, whichever params file ``--params`` names."""
    return Path(value) if base_dir is None else _resolve(value, base_dir)


def weights_path(value: str, base_dir: Path | None = None) -> Path:
    """The file of a ``model.backbone.pretrained`` / ``model.init_from`` value: the pretrain stage's output
    for ``pretrain``, else the path (:func:`params_path`)."""
    return params_path(PRETRAIN_WEIGHTS if value == PRETRAINED_BY_STAGE else value, base_dir)


def portable_uri(uri: str, root: Path = REPO_ROOT) -> str:
    """``uri`` as a committed report may show it: a local path under the repository made relative to it
    (``sqlite:////repo/mlflow.db`` -> ``sqlite:///mlflow.db``), another local path reduced to its scheme
    (``sqlite:``, ``file:``, ``<local path>``); server addresses (http, postgresql, ...) kept."""
    for prefix in ("sqlite:///", "file://", ""):
        if uri.startswith(prefix) and (prefix or "://" not in uri):
            path = Path(uri[len(prefix):])
            break
    else:
        return uri
    if not path.is_absolute():
        return uri
    try:
        return ("sqlite:///" if prefix == "sqlite:///" else "") + path.relative_to(root).as_posix()
    except ValueError:
        return prefix.split("//")[0] or "<local path>"
