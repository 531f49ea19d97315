"""Generate the embedded synthetic dataset (COCO layout) in data/synthetic, the data.root of the CPU default."""
from pathlib import Path

from pipeline.tracking.stage import run_stage

OUT = Path("data/synthetic")


def main(params, run, args):
    """Render the train, val and test splits of the synthetic shapes dataset (nothing with data.source coco)."""
    from pipeline.utils.io import atomic_dir, atomic_write_text
    from pipeline.synthetic.shapes import generate

    with atomic_dir(OUT) as out_dir:
        if params.data.source == "synthetic":
            generate(out_dir, params.data.synthetic, params.seed)
        else:
            atomic_write_text(out_dir / "README.txt", "data.source is coco: no synthetic data generated.\n")


if __name__ == "__main__":
    run_stage("generate", main)
