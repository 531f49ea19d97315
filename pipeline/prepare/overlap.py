"""The leakage check: no image in two roles, by image id, by file or by content.

Only the images a role keeps after cleaning count, so a val role carved from the train split (the same folder,
disjoint ids) is no overlap, and neither is an image cleaning dropped. Content costs little: the file sizes
are compared first, and only files whose size also occurs in another role are hashed (SHA-256).
"""
from __future__ import annotations

import hashlib
import itertools
import os
from pathlib import Path
from typing import Any, Mapping

KINDS = ("id", "path", "content")  # the same image id; the same file; the same bytes in another file
EXAMPLES = 3  # file names recorded per pair of roles


def find_overlap(images: Mapping[str, list[dict[str, Any]]], image_dirs: Mapping[str, Path]) -> dict[str, Any]:
    """The images shared by each pair of roles, ``{"train/test": {"images", "id", "path", "content",
    "examples"}}``, only pairs that share one; empty when no image is in two roles.

    ``images`` are the kept COCO image records of each role (in role order), ``image_dirs`` their folders. A
    pair's counts are images of its second role matching one of its first: by any kind (``images``) and per
    kind; ``examples`` are the first few of their file names.
    """
    files = {role: [(image["id"], (image_dirs[role] / image["file_name"]).resolve(), image["file_name"])
                    for image in images[role]] for role in images}
    digests = content_digests([{path for _, path, _ in files[role]} for role in files])
    overlap = {}
    for first, second in itertools.combinations(files, 2):
        ids = {image_id for image_id, _, _ in files[first]}
        paths = {path for _, path, _ in files[first]}
        by_digest: dict[str, set[Path]] = {}
        for path in paths & digests.keys():
            by_digest.setdefault(digests[path], set()).add(path)
        counts = {"images": 0, **dict.fromkeys(KINDS, 0), "examples": []}
        for image_id, path, file_name in files[second]:
            found = {"id": image_id in ids, "path": path in paths,
                     "content": bool(by_digest.get(digests.get(path), set()) - {path})}
            if any(found.values()):
                counts["images"] += 1
                counts.update({kind: counts[kind] + found[kind] for kind in KINDS})
                if len(counts["examples"]) < EXAMPLES:
                    counts["examples"].append(file_name)
        if counts["images"]:
            overlap[f"{first}/{second}"] = counts
    return overlap


def content_digests(roles: list[set[Path]]) -> dict[Path, str]:
    """The SHA-256 of each file whose size occurs in two or more of ``roles`` (sets of files), by path."""
    sizes = [{path: os.stat(path).st_size for path in files} for files in roles]
    shared = {size for a, b in itertools.combinations(sizes, 2) for size in set(a.values()) & set(b.values())}
    candidates = {path for by_path in sizes for path, size in by_path.items() if size in shared}
    return {path: file_digest(path) for path in sorted(candidates)}


def file_digest(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def overlap_message(overlap: dict[str, Any]) -> str:
    """One line: the images in two roles, per pair of roles and kind, with the first few file names."""
    pairs = ", ".join(
        f"{pair} {counts['images']} ({', '.join(f'{counts[kind]} by {kind}' for kind in KINDS if counts[kind])}; "
        f"{', '.join(counts['examples'])})"
        for pair, counts in overlap.items()
    )
    return (f"images in two roles: {pairs}; the scores would include images seen in training or selection: fix "
            "the splits, or set data.allow_overlap: true to prepare anyway (the overlap is then recorded)")
