"""One ablation cell: train with the shortened schedule at (pos_iou, neg_iou, anchor scales, seed), score the test split."""
from pathlib import Path

from pipeline.tracking.stage import Tracking, run_stage

PREPARED = Path("data/prepared")


def configure(parser):
    parser.add_argument("--pos-iou", type=float, required=True)
    parser.add_argument("--neg-iou", type=float, required=True)
    parser.add_argument("--scales", required=True, help="a name in ablation.scale_sets")
    parser.add_argument("--seed", type=int, required=True, help="one of ablation.seeds")


def derive(params, args):
    from pipeline.ablation.cell import cell_params
    from pipeline.ablation.grid import cell_name, group_key

    cell = cell_params(params, args.pos_iou, args.neg_iou, args.scales, args.seed)
    name = cell_name(args.pos_iou, args.neg_iou, args.scales, args.seed)
    tags = {"dvc_stage": "ablate", "ablation_cell": name, "ablation.pos_iou": args.pos_iou,
            "ablation.neg_iou": args.neg_iou, "ablation.anchor_scales": args.scales, "ablation.seed": args.seed}
    experiment = f"{params.mlflow.experiment}-ablation"
    return cell, Tracking(experiment=experiment, run_name=f"ablate {name}", tags=tags,
                          parent=(group_key(params), "ablation"))


def check(params, args):
    """The prepared data must be there."""
    from pipeline.utils.errors import require

    require(PREPARED, "prepare")


def main(params, run, args):
    """Train and score one cell of the ablation grid."""
    from pipeline.ablation.cell import run_cell
    from pipeline.ablation.grid import CELLS_DIR, CellOutputs, cell_name

    name = cell_name(args.pos_iou, args.neg_iou, args.scales, args.seed)
    run_cell(params, PREPARED, Path("models/ablation") / name, CellOutputs(CELLS_DIR / f"{name}.json"), run,
             grid={"pos_iou": args.pos_iou, "neg_iou": args.neg_iou, "anchor_scales": args.scales})


if __name__ == "__main__":
    run_stage("ablate", main, configure=configure, derive=derive, check=check)
