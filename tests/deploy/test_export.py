"""ONNX export: ONNX Runtime gives PyTorch's raw outputs and, after post-processing, its detections."""
import pytest
import torch

from pipeline.config import EvalParams
from pipeline.deploy.export import export_onnx, onnx_detections, onnx_outputs, onnx_session
from pipeline.models.loading import load_model
from pipeline.models.yolact.postprocess import detect
from tests.tiny import run_stage

LOW_SCORE = EvalParams(score_threshold=0.05)


@pytest.fixture(scope="module")
def exported(untrained_model, tmp_path_factory):
    trained = load_model(untrained_model, torch.device("cpu"))
    path = export_onnx(trained.model, tmp_path_factory.mktemp("onnx") / "model.onnx", size=64)
    return trained, onnx_session(path)


def images(seed: int) -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", [0, 1])
def test_onnx_runtime_gives_the_raw_outputs_of_pytorch(exported, seed):
    trained, session = exported
    with torch.no_grad():
        eager = trained.model(images(seed))
    onnx = onnx_outputs(session, images(seed))
    for name, value in onnx.items():
        assert value.shape == eager[name].shape, name
        assert torch.allclose(value, eager[name], atol=1e-3, rtol=0), name


def test_onnx_runtime_gives_the_detections_of_pytorch(exported):
    trained, session = exported
    with torch.no_grad():
        out = trained.model(images(2))
    (eager,) = detect(out["loc"], out["conf"], out["mask"], out["proto"], out["priors"], score_threshold=0.05,
                      nms="fast", nms_iou=0.5, top_k=200, max_detections=100, use_focal_loss=False)
    (onnx,) = onnx_detections(session, images(2), LOW_SCORE, use_focal_loss=False)
    assert len(eager["scores"]) == len(onnx["scores"]) > 0
    assert torch.equal(eager["labels"], onnx["labels"])
    assert torch.allclose(eager["scores"], onnx["scores"], atol=1e-4)
    assert torch.allclose(eager["boxes"], onnx["boxes"], atol=1e-4)
    assert torch.allclose(eager["masks"], onnx["masks"], atol=1e-3)


def test_the_export_command_writes_a_checked_graph_and_keeps_an_existing_file(tiny_project, untrained_model, tmp_path):
    out = tmp_path / "net.onnx"
    proc = run_stage(tiny_project, "export", "--model", str(untrained_model), "--format", "onnx", "--out", str(out))
    assert out.is_file() and "largest difference to PyTorch" in proc.stdout
    assert float(proc.stdout.rsplit(" ", 1)[1]) < 1e-3
    before = out.read_bytes()
    again = run_stage(tiny_project, "export", "--model", str(untrained_model), "--out", str(out), check=False)
    assert again.returncode == 1 and "exists" in again.stderr and out.read_bytes() == before
    low = run_stage(tiny_project, "export", "--model", str(untrained_model), "--out", str(tmp_path / "x.onnx"),
                    "--opset", "13", check=False)
    assert low.returncode == 1 and "--opset" in low.stderr and not (tmp_path / "x.onnx").exists()
