import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COCO_TINY = REPO.parent / "shared" / "data" / "coco_tiny"


@pytest.fixture
def coco_tiny() -> Path:
    if not (COCO_TINY / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"real COCO excerpt not found at {COCO_TINY} (it ships only beside the repo in ../shared)")
    return COCO_TINY


def stage_env(**extra: str) -> dict[str, str]:
    """Environment for running `python -m stages.X` from another directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


PYTHON = sys.executable
_EMPTY_STORE: list[Path] = []


def new_store(path: Path) -> str:
    """An empty MLflow sqlite store at ``path`` and its URI.

    Copied from one store created (and migrated by MLflow) once per session: creating one takes about 2 s,
    and the suite would otherwise create dozens. Tests of store creation itself use a path that does not exist.
    """
    if not _EMPTY_STORE:
        from mlflow.tracking import MlflowClient

        template = Path(tempfile.mkdtemp(prefix="empty-mlflow-store-")) / "mlflow.db"
        MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
        _EMPTY_STORE.append(template)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_EMPTY_STORE[0], path)
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """A scratch copy of the project with tiny params whose generate and prepare stages have run."""
    from tests.tiny import make_project, run_stage

    project = make_project(tmp_path_factory.mktemp("tiny") / "project")
    run_stage(project, "generate")
    run_stage(project, "prepare")
    return project


@pytest.fixture(scope="session")
def untrained_model(tiny_project, tmp_path_factory) -> Path:
    """A tiny model with its initial weights, saved as the train stage saves one (plenty of low-score detections)."""
    import torch

    from pipeline.config import load, to_dict
    from pipeline.data.layout import read_label_map
    from pipeline.models.yolact.model import build_model
    from pipeline.training.loop import MODEL_SECTIONS

    params = load(tiny_project / "params.yaml")
    label_map = read_label_map(tiny_project / "data/prepared")
    torch.manual_seed(0)
    model = build_model(params, num_classes=len(label_map))
    path = tmp_path_factory.mktemp("untrained") / "model.pt"
    torch.save({"state_dict": model.state_dict(), "label_map": label_map,
                "params": {name: to_dict(params)[name] for name in MODEL_SECTIONS}}, path)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
