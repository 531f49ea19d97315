"""Reading COCO annotation files quietly."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

from pycocotools.coco import COCO


def load_coco(path: str | Path) -> COCO:
    """A ``COCO`` ground-truth index, without pycocotools' progress prints."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))
