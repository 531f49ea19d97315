"""One ablation cell: train with the shortened schedule at (pos_iou, neg_iou, anchor scales), evaluate."""
from pathlib import Path

from pipeline.stage import Tracking, run_stage

PREPARED = Path("data/prepared")
CELLS = Path("reports/ablation/cells")


def cell_name(pos_iou: float, neg_iou: float, scales: str) -> str:
    return f"p{pos_iou:g}-n{neg_iou:g}-{scales}"


def configure(parser):
    parser.add_argument("--pos-iou", type=float, required=True)
    parser.add_argument("--neg-iou", type=float, required=True)
    parser.add_argument("--scales", required=True, help="a name in ablation.scale_sets")


def derive(params, args):
    from pipeline.ablation import cell_params

    cell = cell_params(params, args.pos_iou, args.neg_iou, args.scales)
    name = cell_name(args.pos_iou, args.neg_iou, args.scales)
    tags = {"dvc_stage": "ablate", "ablation_cell": name, "ablation.pos_iou": args.pos_iou,
            "ablation.neg_iou": args.neg_iou, "ablation.anchor_scales": args.scales}
    return cell, Tracking(experiment=f"{params.mlflow.experiment}-ablation", run_name=f"ablate {name}", tags=tags)


def main(params, run, args):
    """Train and evaluate one cell of the ablation grid."""
    from pipeline.ablation import run_cell

    name = cell_name(args.pos_iou, args.neg_iou, args.scales)
    run_cell(params, PREPARED, Path("models/ablation") / name, CELLS / f"{name}.json", run,
             grid={"pos_iou": args.pos_iou, "neg_iou": args.neg_iou, "anchor_scales": args.scales})


if __name__ == "__main__":
    run_stage("ablate", main, configure=configure, derive=derive)
