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
    Target("train_fp32_vs_maskrcnn", "training img/s, fp32, over Mask R-CNN fp32", 1.8),
    Target("train_bf16_peak_share", "bf16 training GFLOP/s as a share of the bf16 matmul peak", 0.56, percent=True),
    Target("infer_bf16_speedup_vs_maskrcnn_fp32", "inference speed, bf16, over Mask R-CNN fp32", 3.0),
    Target("match_speedup", "`match_batch` speed-up over the reference loop", 20.0),
    Target("loader_vs_train", "data loader img/s over default-config training img/s", 3.0),
)
# The top-level numbers of bench.json, in order.
TOP_LEVEL = (*(t.key for t in TARGETS[:4]), "match_identical", TARGETS[4].key)


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
    return "\n".join([
        *_header(result), *_targets(result), *_models(result), *_matching(result), *_loader(result),
        *_profiles(result), *_sections(result),
    ]) + "\n"


def _header(result: dict[str, Any]) -> list[str]:
    machine = result["machine"]
    return [
        "# Benchmarks",
        "",
        f"`{result['command']}` on {machine['device_name']} ({machine['device']}, {machine['threads']} threads), "
        f"torch {machine['torch']}, torchvision {machine['torchvision']}. Each timed figure is the best of "
        "several warm runs (all of them are in bench.json), since other processes only add time; the models "
        "compared in a ratio are timed in turn (A B C A B C ...) so that a changing load falls on all of them. "
        "Absolute numbers are noisy on a shared machine; the ratios are what counts.",
    ]


def _targets(result: dict[str, Any]) -> list[str]:
    by_key = {t.key: t for t in TARGETS}
    lines = ["", "## Targets", "", "| target | measured | required | status |", "|---|---:|---:|---|"]
    for row in result["targets"]:
        target = by_key[row["key"]]
        status = "not measured" if row["met"] is None else ("met" if row["met"] else "**missed**")
        lines.append(f"| {row['label']} | {target.format(row['value'])} | >= {target.format(row['minimum'])} | {status} |")
    lines.append(f"\nMatcher outputs identical to the reference (`conf_t`, `matched_idx`, `loc_t`): "
                 f"**{str(result['match_identical']).lower()}**.")
    return lines


def _models(result: dict[str, Any]) -> list[str]:
    yolact, maskrcnn, matmul = result["yolact"], result["maskrcnn"], result["matmul"]
    lines = [
        "", "## Peak matmul (`torch.matmul`, square matrices)", "", "| dtype | size | GFLOP/s |", "|---|---:|---:|",
        *(f"| {dtype} | {entry['size']} | {entry['gflops']:.1f} |" for dtype, entry in matmul.items()),
        "",
        f"## YOLACT R-{yolact['depth']} against Mask R-CNN R-50-FPN at {yolact['image_size']} px, batch {yolact['batch']}",
        "",
        "| model | precision | memory format | train img/s | train GFLOP/s (share of peak) "
        "| inference s/image | inference GFLOP/s (share of peak) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    rows = [("YOLACT", p, yolact) for p in yolact["train"]] + [("Mask R-CNN", "fp32", maskrcnn)]
    for name, precision, entry in rows:
        train, infer = entry["train"][precision], entry["infer"][precision]
        layout = "channels_last" if train["channels_last"] else "contiguous"
        lines.append(
            f"| {name} | {precision} | {layout} | {train['images_per_s']:.3f} | "
            f"{train['gflops']:.1f} ({train['peak_share']:.0%}) | {infer['seconds_per_image']:.3f} | "
            f"{infer['gflops']:.1f} ({infer['peak_share']:.0%}) |"
        )
    ours_train, ours_infer = yolact["train"], yolact["infer"]
    their_train, their_infer = maskrcnn["train"]["fp32"], maskrcnn["infer"]["fp32"]
    lines += [
        "",
        f"- Ratios against Mask R-CNN fp32: training fp32 "
        f"{ours_train['fp32']['images_per_s'] / their_train['images_per_s']:.2f}x, bf16 "
        f"{ours_train['bf16']['images_per_s'] / their_train['images_per_s']:.2f}x; inference fp32 "
        f"{their_infer['seconds_per_image'] / ours_infer['fp32']['seconds_per_image']:.2f}x, bf16 "
        f"{their_infer['seconds_per_image'] / ours_infer['bf16']['seconds_per_image']:.2f}x.",
        f"- FLOPs per image ({yolact['flops_method']}; 2 per multiply-add): YOLACT forward "
        f"{yolact['forward_gflops_per_image']:.4g} GFLOPs (`pipeline.model.count_flops`), training "
        f"{yolact['train_gflops_per_image']:.4g} ({yolact['train_gflops_per_image'] / yolact['forward_gflops_per_image']:.2f}x "
        f"forward); Mask R-CNN inference {maskrcnn['forward_gflops_per_image']:.4g}, training "
        f"{maskrcnn['train_gflops_per_image']:.4g}. GFLOP/s = these FLOPs x images/s; the share is of the "
        "matmul peak of the same dtype.",
        "- Memory format: for each model and precision, warm inference steps are timed in each format, "
        "alternately, and the faster format is used for its training and inference (probe times in "
        "bench.json); Mask R-CNN gets the same choice.",
        f"- Inference = eval forward + `pipeline.postprocess.detect` (score threshold {yolact['score_threshold']}) "
        "for YOLACT; torchvision's forward with its own post-processing (masks pasted at image size) for "
        f"Mask R-CNN. Detections per image with these random weights: YOLACT "
        f"{ours_infer['bf16']['detections_per_image']:.0f}, Mask R-CNN {their_infer['detections_per_image']:.0f}"
        + (" (its mask head then has no RoI to run on, so its inference time is a lower bound)."
           if their_infer["detections_per_image"] == 0 else "."),
        f"- Training: {result['settings']['instances_per_image']} random elliptical instances per image; YOLACT "
        "with `pipeline.loss.yolact_loss`, gradient clipping and the optimizer of `train.optimizer` as "
        "`pipeline.train` runs them; "
        "Mask R-CNN with its own losses and SGD.",
    ]
    if any(entry[kind][p]["peak_share"] > 1 for _, p, entry in rows for kind in ("train", "infer")):
        lines.append(
            "- A share above 100% means the convolutions (oneDNN) run faster than `torch.matmul` of that dtype "
            "(fp32 matmul goes through MKL's sgemm, which is not tuned for every CPU), so that peak is no bound.")
    return lines


def _matching(result: dict[str, Any]) -> list[str]:
    match = result["matching"]
    return [
        "",
        f"## Matching: batch {match['batch']} x {match['num_gt']} GTs x {match['num_priors']} priors",
        "",
        "| implementation | seconds |",
        "|---|---:|",
        f"| `pipeline.matching.match_batch` | {match['match_batch']['best_s']:.4f} |",
        f"| `tests/reference_match.py`, image by image | {match['reference']['best_s']:.4f} |",
        "",
        f"Speed-up {match['speedup']:.1f}x; identical outputs: "
        + ", ".join(f"`{k}` {str(v).lower()}" for k, v in match["identical_by_output"].items()) + ".",
    ]


def _loader(result: dict[str, Any]) -> list[str]:
    loader = result["loader"]
    return [
        "",
        "## Data loader against training at the default config (params.yaml)",
        "",
        f"{loader['batches']} batches of {loader['batch_size']}, each loader batch followed by one training step "
        "(means over the same rounds).",
        "",
        "| what | images/s |",
        "|---|---:|",
        f"| `InstanceDataset` + train transforms, DataLoader with {loader['num_workers']} workers | "
        f"{loader['loader_images_per_s']:.1f} |",
        f"| training, {loader['model']}, {loader['precision']} | {loader['train_images_per_s']:.1f} |",
    ]


def _profiles(result: dict[str, Any]) -> list[str]:
    if not result.get("profiles"):
        return []
    by_key = {t.key: t for t in TARGETS}
    lines = ["", "## What is in the way of the missed targets"]
    for key, profile in result["profiles"].items():
        lines += ["", f"### {by_key[key].label}", "", *_analysis(key, result), profile["what"], "",
                  "| op | calls | self ms | share |", "|---|---:|---:|---:|"]
        lines += [f"| `{r['op']}` | {r['calls']} | {r['self_ms']:.1f} | {r['share']:.1%} |" for r in profile["top"]]
    return lines


def _analysis(key: str, result: dict[str, Any]) -> list[str]:
    """Measured facts that bound a target, before its profile."""
    yolact, maskrcnn = result["yolact"], result["maskrcnn"]
    if key in ("train_fp32_vs_maskrcnn", "infer_bf16_speedup_vs_maskrcnn_fp32"):
        kind, precision = ("train", "fp32") if key.startswith("train") else ("infer", "bf16")
        flops = "train_gflops_per_image" if kind == "train" else "forward_gflops_per_image"
        flops_ratio = maskrcnn[flops] / yolact[flops]
        ours, theirs = yolact[kind][precision]["gflops"], maskrcnn[kind]["fp32"]["gflops"]
        minimum = next(t.minimum for t in TARGETS if t.key == key)
        return [f"Mask R-CNN needs {flops_ratio:.2f}x our FLOPs per image; our {precision} step runs at {ours:.1f} "
                f"GFLOP/s, its fp32 step at {theirs:.1f} ({ours / theirs:.2f}x), and the speed ratio is the product "
                f"of the two. {minimum:g}x would take {minimum / flops_ratio:.2f}x its GFLOP/s at these FLOPs.", ""]
    if key == "train_bf16_peak_share":
        fp32, bf16 = yolact["train"]["fp32"], yolact["train"]["bf16"]
        return [f"bf16 training runs at {bf16['gflops']:.1f} GFLOP/s against a bf16 matmul peak of "
                f"{result['matmul']['bf16']['gflops']:.1f}; it is {bf16['images_per_s'] / fp32['images_per_s']:.2f}x "
                f"the fp32 step, while the matmul peak is "
                f"{result['matmul']['bf16']['gflops'] / result['matmul']['fp32']['gflops']:.2f}x fp32's.", ""]
    if key == "loader_vs_train":
        loader = result["loader"]
        return [f"The loader delivers {loader['loader_images_per_s']:.1f} img/s with {loader['num_workers']} worker "
                f"processes (`data.num_workers`); training consumes {loader['train_images_per_s']:.1f}.", ""]
    return []


def _sections(result: dict[str, Any]) -> list[str]:
    threads, load = result["machine"]["threads"], result.get("load_average", {})
    lines = [
        "", "## Where the benchmark run spent its time", "",
        f"Load = the 1-minute load average at the end of the section; above {threads} (our threads), other "
        "processes were competing for the cores and the section's timings are inflated (small operators "
        "most: their threads wait for each other).",
        "", "| section | seconds | load |", "|---|---:|---:|",
    ]
    lines += [f"| {name} | {seconds:.1f} | {load[name]:.2f} |" if name in load else f"| {name} | {seconds:.1f} | |"
              for name, seconds in result["sections"].items()]
    lines.append(f"| total | {sum(result['sections'].values()):.1f} | |")
    return lines
