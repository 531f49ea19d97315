"""A short content hash of data files, tagged on runs."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable


def fingerprint(paths: Iterable[Path]) -> str:
    """A short content hash of files (the prepared data's annotation files)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
