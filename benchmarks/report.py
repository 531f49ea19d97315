"""The performance targets and the readable report (``reports/bench.md``) of a benchmark result."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class Target:
    key: str  # top-level key of bench.json
    label: str
    minimum: float
    percent: bool = False  # a share shown as a percentage, else a ratio shown as "x"

    def format(self, value: Optional[float]) -> str:
        if value is None:
            return "n/a"
        return f"{value:.1%}" if self.percent else f"{value:.2f}x"


TARGETS = (
    Target("train_fp32_vs_maskrcnn", "training img/s, fp32, vs Mask R-CNN fp32", 1.8),
    Target("train_bf16_peak_share", "bf16 training GFLOP/s as a share of the bf16 matmul peak", 0.56, percent=True),
    Target("infer_bf16_speedup_vs_maskrcnn_fp32", "inference s/image, bf16, speed-up over Mask R-CNN fp32", 3.0),
    Target("match_speedup", "match_batch speed-up over the reference loop", 20.0),
    Target("loader_vs_train", "data loader img/s over default-config training img/s", 3.0),
)


def check_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: key, label, value (None when not measured), minimum, met (None when not measured).

    ``match_speedup`` also requires ``match_identical``: a fast matcher that differs does not count.
    """
    rows = []
    for target in TARGETS:
        value = result.get(target.key)
        met = None if value is None else value >= target.minimum
        if target.key == "match_speedup" and met is not None:
            met = met and bool(result.get("match_identical"))
        rows.append({"key": target.key, "label": target.label, "value": value, "minimum": target.minimum, "met": met})
    return rows


def render_markdown(result: dict[str, Any]) -> str:
    """``reports/bench.md`` from the full ``bench.json`` content."""
    machine, settings = result["machine"], result["settings"]
    lines = [
        "# Benchmarks",
        "",
        f"`{result['command']}` on {machine['device_name']} ({machine['device']}, {machine['threads']} threads), "
        f"torch {machine['torch']}, torchvision {machine['torchvision']}. "
        f"Every timed figure is the best of {settings['repeats']} runs after {settings['warmup']} warm-up "
        "run(s): other processes only add time. Absolute numbers are noisy on a shared machine; the ratios "
        "compare runs taken minutes apart in the same process.",
        "",
        "## Targets",
        "",
        "| target | measured | required | status |",
        "|---|---:|---:|---|",
    ]
    by_key = {t.key: t for t in TARGETS}
    for row in result["targets"]:
        target = by_key[row["key"]]
        status = "not measured" if row["met"] is None else ("met" if row["met"] else "**missed**")
        lines.append(f"| {row['label']} | {target.format(row['value'])} | >= {target.format(row['minimum'])} | {status} |")
    lines.append(f"\nMatcher outputs identical to the reference (`conf_t`, `matched_idx`, `loc_t`): "
                 f"**{result.get('match_identical')}**.")

    lines += ["", "## Peak matmul", "", "| dtype | size | GFLOP/s |", "|---|---:|---:|"]
    for dtype, entry in result["matmul"].items():
        lines.append(f"| {dtype} | {entry['size']} | {entry['gflops']:.1f} |")

    yolact, maskrcnn = result["yolact"], result["maskrcnn"]
    size, batch = settings["image_size"], settings["batch"]
    lines += [
        "",
        f"## YOLACT R-{yolact['depth']} vs Mask R-CNN R-50-FPN at {size} px, batch {batch}",
        "",
        "| model | precision | memory format | train img/s | train GFLOP/s | share of peak | inference s/image |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for precision in ("fp32", "bf16"):
        train, infer = yolact["train"][precision], yolact["infer"][precision]
        lines.append(
            f"| YOLACT | {precision} | train {_format_name(train)}, inference {_format_name(infer)} | "
            f"{train['images_per_s']:.2f} | {train['gflops']:.1f} | {train['peak_share']:.1%} | "
            f"{infer['seconds_per_image']:.3f} |"
        )
    train, infer = maskrcnn["train"]["fp32"], maskrcnn["infer"]["fp32"]
    lines.append(
        f"| Mask R-CNN | fp32 | train {_format_name(train)}, inference {_format_name(infer)} | "
        f"{train['images_per_s']:.2f} | | | {infer['seconds_per_image']:.3f} |"
    )
    lines += [
        "",
        f"- FLOPs per image (`torch.utils.flop_counter`, 2 per multiply-add): YOLACT forward "
        f"{yolact['forward_gflops_per_image']:.1f} GFLOPs (`pipeline.model.count_flops`), training "
        f"{yolact['train_gflops_per_image']:.1f} GFLOPs counted directly over forward + loss + backward "
        f"({yolact['train_gflops_per_image'] / yolact['forward_gflops_per_image']:.2f}x forward); Mask R-CNN "
        f"inference {maskrcnn['forward_gflops_per_image']:.1f} GFLOPs (convolutions and matmuls as run on "
        "these random weights). Train GFLOP/s = training FLOPs x img/s; share of the matmul peak of the same dtype.",
        f"- Memory format: each model and precision is timed once in each format and the faster is kept "
        f"(probe seconds per step in bench.json); Mask R-CNN gets the same choice.",
        f"- Ratios: training fp32 {result['train_fp32_vs_maskrcnn']:.2f}x, bf16 "
        f"{yolact['train_bf16_vs_maskrcnn_fp32']:.2f}x Mask R-CNN fp32; inference fp32 "
        f"{yolact['infer_fp32_speedup_vs_maskrcnn_fp32']:.2f}x, bf16 "
        f"{result['infer_bf16_speedup_vs_maskrcnn_fp32']:.2f}x.",
        f"- Inference = eval forward + `pipeline.postprocess.detect` for YOLACT (score threshold "
        f"{settings['score_threshold']}), torchvision's forward with its own post-processing for Mask R-CNN. "
        f"With random weights few scores pass the thresholds (detections per image: YOLACT "
        f"{yolact['infer']['bf16']['detections_per_image']:.0f}, "
        f"Mask R-CNN {infer['detections_per_image']:.0f}), so both times are mostly the networks.",
        f"- Training targets: {settings['instances_per_image']} random elliptical instances per image; YOLACT "
        "uses `pipeline.loss.yolact_loss`, Mask R-CNN its own losses; both SGD with momentum.",
    ]

    match = result["matching"]
    lines += [
        "",
        f"## Matching: batch {match['batch']} x {match['num_gt']} GTs x {match['num_priors']} priors",
        "",
        "| implementation | seconds |",
        "|---|---:|",
        f"| `pipeline.matching.match_batch` | {match['match_batch']['best_s']:.3f} |",
        f"| `tests/reference_match.py`, per image | {match['reference']['best_s']:.3f} |",
        "",
        f"Speed-up {match['speedup']:.1f}x; identical: {match['identical_by_output']}.",
    ]

    loader = result["loader"]
    lines += ["", "## Data loader vs training at the default config (params.yaml)", ""]
    if "skipped" in loader:
        lines.append(f"Skipped: {loader['skipped']}")
    else:
        default = result["default_train"]
        lines += [
            "| what | images/s |",
            "|---|---:|",
            f"| loader ({loader['num_workers']} workers, batch {loader['batch_size']}, {loader['images']} images) "
            f"| {loader['images_per_s']:.1f} |",
            f"| training, {default['model']} ({default['precision']}, batch {default['batch_size']}) "
            f"| {default['images_per_s']:.1f} |",
        ]

    if result.get("profiles"):
        lines += ["", "## What is in the way (missed targets, profiled)", ""]
        for key, profile in result["profiles"].items():
            lines += [f"### {by_key[key].label}", "", profile["what"], "",
                      "| op | calls | self ms | share |", "|---|---:|---:|---:|"]
            for row in profile["top"]:
                lines.append(f"| `{row['op']}` | {row['calls']} | {row['self_ms']:.1f} | {row['share']:.1%} |")
            lines.append("")

    lines += ["", "## Where the benchmark spent its time", "", "| section | seconds |", "|---|---:|"]
    for name, seconds in result["sections"].items():
        lines.append(f"| {name} | {seconds:.1f} |")
    lines.append(f"| total | {sum(result['sections'].values()):.1f} |")
    return "\n".join(lines) + "\n"


def _format_name(entry: dict[str, Any]) -> str:
    return "channels_last" if entry["channels_last"] else "contiguous"
