"""Checks of the image files an annotation json names: contained in their folder, regular, decodable,
of the size the json says.

A ``file_name`` is untrusted input: an absolute name, a ``..`` part or a symlink that resolves
outside the image folder is refused (``unsafe_path``) before anything is opened, and so is anything
but a regular file (``not_a_file``: a folder, a FIFO that would block the reader, a device).
"""
from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterator, Optional

from PIL import Image

from pipeline.prepare.annotations import Drop

_VERIFY_CHUNK = 64


def contained_path(image_dir: Path, file_name: str) -> tuple[Optional[Path], Optional[Drop]]:
    """``(path, None)`` for a regular file inside ``image_dir``, else ``(None, Drop)``."""
    parts = PurePosixPath(file_name.replace("\\", "/")).parts
    if PurePosixPath(file_name).is_absolute() or PureWindowsPath(file_name).is_absolute() or ".." in parts:
        return None, Drop("unsafe_path", f"{file_name!r} escapes the image folder")
    folder = image_dir.resolve()
    path = (folder / file_name).resolve()
    if not path.is_relative_to(folder):
        return None, Drop("unsafe_path", f"{file_name!r} resolves outside the image folder (symlink)")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None, Drop("missing_file", f"{file_name}: no such file")
    except OSError as err:
        return None, Drop("unreadable_image", f"{file_name}: {err.strerror}")
    if not stat.S_ISREG(mode):
        return None, Drop("not_a_file", f"{file_name} is not a regular file")
    return path, None


def check_image(image_dir: Path, image: dict[str, Any]) -> tuple[Optional[str], Optional[Drop]]:
    """``(PIL mode, None)`` if ``image["file_name"]`` is a contained regular file that decodes and has
    the json's size, else ``(None, Drop)``.

    JPEGs are decoded at 1/8 scale (PIL's draft mode): cheap, yet it reads the whole entropy-coded
    stream, so truncated files are caught here rather than in the training loop.
    """
    file_name = image["file_name"]
    path, drop = contained_path(image_dir, file_name)
    if drop is not None:
        return None, drop
    try:
        with Image.open(path) as im:
            size, mode = im.size, im.mode
            im.draft(mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except Exception as err:  # PIL raises many types for broken files
        return None, Drop("unreadable_image", f"{file_name}: {type(err).__name__}: {err}")
    if size != (image["width"], image["height"]):
        return None, Drop(
            "size_mismatch", f"{file_name}: file is {size[0]}x{size[1]}, json says {image['width']}x{image['height']}"
        )
    return mode, None


def verified_images(
    images: list[dict[str, Any]], image_dir: Path
) -> Iterator[tuple[dict[str, Any], Optional[str], Optional[Drop]]]:
    """``(image, mode, drop)`` in order, checked by a thread pool a chunk at a time so that a
    ``max_images`` subset opens only about the images it keeps."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(images), _VERIFY_CHUNK):
            chunk = images[start : start + _VERIFY_CHUNK]
            for image, (mode, drop) in zip(chunk, pool.map(lambda image: check_image(image_dir, image), chunk)):
                yield image, mode, drop
