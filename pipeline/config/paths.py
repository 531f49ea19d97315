"""Where things are: the repository root (computed from this file's depth in the package) and params paths."""
from __future__ import annotations

from pathlib import Path


PACKAGE_DIR = Path(__file__).resolve().parents[1]  # pipeline/: this file is pipeline/config/paths.py
REPO_ROOT = PACKAGE_DIR.parent
WEIGHTS_DIR = "weights"  # local weight files (model.backbone.pretrained, model.init_from); a dep of training


def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else base_dir / p


def resolve_path(path: str, base_dir: Path = REPO_ROOT) -> Path:
    """A params path, relative paths taken from the repository root."""
    return _resolve(path, base_dir)
