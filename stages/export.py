"""Export a trained network (not a DVC stage, not tracked).

    python -m stages.export --model models/model.pt --format onnx [--size 550] [--out models/model.onnx]
"""
from pathlib import Path

from pipeline.tracking.stage import run_stage

FORMATS = ("onnx",)


def configure(parser):
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"), help="a trained model.pt")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--size", type=int, default=None, help="input size in pixels (default: the trained input.size)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18; at least 17)")
    parser.add_argument("--out", type=Path, default=None, help="output file (default: the model's path, .onnx)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def check(params, args):
    """The model must be there."""
    from pipeline.utils.errors import require

    require(args.model, "train")


def main(params, run, args):
    """Write the network as an ONNX graph and check it against PyTorch with ONNX Runtime."""
    import torch

    from pipeline.utils.errors import PipelineError
    from pipeline.deploy.export import OPSET, export_onnx, onnx_outputs, onnx_session
    from pipeline.models.loading import load_model

    trained = load_model(args.model, torch.device("cpu"))
    if trained.params.model.arch != "yolact":
        raise PipelineError(f"--model {args.model}: ONNX export supports model.arch yolact only, "
                            f"this model is {trained.params.model.arch}")
    size = args.size or trained.params.input.size
    if size < 32:
        raise PipelineError(f"--size: {size} is smaller than the network's coarsest stride (32)")
    out = args.out or args.model.with_suffix(f".{args.format}")
    if out.exists() and not args.overwrite:
        raise PipelineError(f"--out {out}: exists (choose another file, or --overwrite)")
    export_onnx(trained.model, out, size, args.opset or OPSET)
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = trained.model(images)
    exported = onnx_outputs(onnx_session(out), images)
    worst = max(float((exported[k] - eager[k]).abs().max()) for k in exported)
    print(f"{out}: ONNX opset {args.opset or OPSET}, input [1, 3, {size}, {size}]; "
          f"largest difference to PyTorch on a random input {worst:.2e}")


if __name__ == "__main__":
    run_stage("export", main, configure=configure, tracked=False, check=check)
