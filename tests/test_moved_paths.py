"""Paths that code computes from its own file's place in the package: right at any depth (the package move).

The checkpoint's code hash must cover all of ``pipeline/`` and ``stages/``, not the subpackage that holds
``checkpoints.py``; the repository root is found from the depth of ``config/paths.py``; the registered model
ships the whole ``pipeline`` package as its code, not the ``tracking`` subpackage ``registry.py`` lives in.
"""
from __future__ import annotations

import shutil

from tests.conftest import REPO


def test_the_repository_root_is_computed_from_the_module_depth():
    from pipeline.config import PACKAGE_DIR, REPO_ROOT, resolve_path

    assert REPO_ROOT == REPO and PACKAGE_DIR == REPO / "pipeline"
    assert (REPO_ROOT / "params.yaml").is_file() and (REPO_ROOT / "dvc.yaml").is_file()
    assert resolve_path("weights/README.md") == REPO / "weights/README.md"


def test_the_code_hash_covers_all_of_pipeline_and_stages(tmp_path):
    from pipeline.training.checkpoints import CODE_DIRS, code_hash

    assert CODE_DIRS == (REPO / "pipeline", REPO / "stages")
    dirs = []
    for name in ("pipeline", "stages"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        dirs.append(tmp_path / name)
    dirs = tuple(dirs)
    before = code_hash(dirs)
    assert before == code_hash(CODE_DIRS)  # by relative path and content: the copy hashes the same
    seen = {before}
    for path in ("pipeline/models/yolact/loss.py", "pipeline/config/schema.py", "pipeline/__init__.py",
                 "pipeline/data/transforms.py", "stages/train.py"):
        file = tmp_path / path
        original = file.read_text()
        file.write_text(original + "\n# a change\n")
        changed = code_hash(dirs)
        assert changed not in seen, path
        seen.add(changed)
        file.write_text(original)
    assert code_hash(dirs) == before


def test_the_registered_model_ships_the_whole_pipeline_package():
    from pipeline.tracking import registry

    assert registry.PACKAGE_DIR == REPO / "pipeline"
    assert registry.PYFUNC_MODEL == REPO / "pipeline/deploy/pyfunc_model.py" and registry.PYFUNC_MODEL.is_file()
