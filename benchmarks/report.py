"""The performance targets, what each side of every comparison did, and the readable report
(``reports/bench.md``) of a benchmark result."""
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
    Target("infer_fp32_vs_maskrcnn_fp32", "inference speed over Mask R-CNN, both fp32", 2.5),
    Target("infer_bf16_vs_maskrcnn_bf16", "inference speed over Mask R-CNN, both bf16 autocast", 2.5),
    Target("train_fp32_vs_maskrcnn_fp32", "training img/s over Mask R-CNN, both fp32", 1.8),
    Target("train_bf16_vs_maskrcnn_bf16", "training img/s over Mask R-CNN, both bf16 autocast", 1.8),
    Target("train_bf16_peak_share", "YOLACT bf16 training GFLOP/s as a share of the measured bf16 peak", 0.6,
           percent=True),
    Target("match_speedup", "`match_batch` speed-up over the seed's per-image loop", 20.0),
    Target("loader_vs_train", "one loader worker's img/s over default-config training img/s", 3.0),
)
# The top-level numbers of bench.json, in order.
TOP_LEVEL = (*(t.key for t in TARGETS[:6]), "match_identical", TARGETS[6].key)
MODEL_NAMES = {"yolact": "YOLACT", "maskrcnn": "Mask R-CNN"}


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


def describe_methods(result: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Per compared figure, what each side did (and what both shared), from the measured result's own record."""
    settings, machine = result["settings"], result["machine"]
    inference, training, match, loader = result["inference"], result["training"], result["matching"], result["loader"]
    size, threads = inference["image_size"], machine["threads"]
    peak = result["peak"]["fp32"]
    yp, mp = inference["postprocess"]["yolact"], inference["postprocess"]["maskrcnn"]
    opt = training["optimizer"]

    def timing(repeats: dict[str, int]) -> str:
        counts = "; ".join(f"{p}: {n}" for p, n in repeats.items())
        return (f"timed in turn (A B A B ...): {settings['warmup']} warm-up call(s) each, the first under "
                f"torch.profiler, then timed calls ({counts}), median")

    def detections(precision: str) -> str:
        return ", ".join(f"{MODEL_NAMES[m]} {inference[m][precision]['detections_per_image']:.0f}" for m in MODEL_NAMES)

    default = loader["default"]
    return {
        "attainable peak": {
            "matmul": f"`F.linear` of {peak['matmul']['shape']} (x @ W^T, nn.Linear's layout) per dtype",
            "conv3x3": f"`F.conv2d` {peak['conv3x3']['shape']}, stride 1, padding 1, per dtype",
            "both": f"{settings['warmup']} warm-up call(s), {settings['repeats']} timed, median; the peak of a dtype "
                    "is the faster kernel; every share is of the peak of the step's own dtype",
        },
        "inference": {
            "YOLACT": f"eval forward of the pipeline's inference model (BatchNorm folded into the convolutions); "
                      f"`pipeline.models.yolact.postprocess.detect` on the outputs cast to fp32 (score > "
                      f"{yp['score_threshold']}, {yp['nms']} NMS at IoU {yp['nms_iou']}, top {yp['top_k']} per class, "
                      f"at most {yp['max_detections']}); `to_image`: prototype-resolution masks resized bilinearly "
                      f"inside their boxes at {size}x{size} and thresholded at {yp['mask_threshold']}",
            "Mask R-CNN": f"torchvision's model as shipped: eval forward with its post-processing (score > {mp['score_threshold']}, "
                          f"{mp['nms']} NMS at IoU {mp['nms_iou']}, at most {mp['max_detections']}, 28x28 mask "
                          f"probabilities pasted into their boxes at {size}x{size}); thresholded at {mp['mask_threshold']}",
            "both": f"batch {inference['batch']}, one {size} px random image, fresh random weights, channels-last, "
                    f"{threads} threads; end product boxes (pixels), scores, labels and boolean masks at {size}x{size}; "
                    f"fp32, and bf16 with one `torch.autocast` region around the whole step; detections per image "
                    f"fp32: {detections('fp32')}; bf16: {detections('bf16')}; {timing(inference['repeats'])}",
        },
        "training": {
            "YOLACT": "forward under autocast, `pipeline.models.yolact.loss.yolact_loss` outside it (as `pipeline.training.loop`), backward",
            "Mask R-CNN": "forward with targets under autocast (torchvision computes its five losses inside), "
                          "their sum, backward",
            "both": f"batch {training['batch']}, {size} px random images with {training['instances_per_image']} "
                    f"elliptical instances each; `build_optimizer` ({opt['name']}, lr {opt['lr']}, momentum "
                    f"{opt['momentum']}, weight decay {opt['weight_decay']} off norms and biases) and gradient "
                    f"clipping at {opt['grad_clip']} for both; BatchNorm trained, no layer frozen; channels-last, "
                    f"{threads} threads; {timing(training['repeats'])}",
        },
        "matching": {
            "match_batch": "`pipeline.models.priors.matching.match_batch`, the whole batch in one call",
            "reference": "`benchmarks.reference_match`, the seed's loop (one GT per iteration), image by image",
            "both": f"the same {match['batch']} images x {match['num_gt']} GTs x {match['num_priors']} priors; "
                    f"timed in turn, {settings['warmup']} warm-up call(s) each, then {settings['repeats']} timed, "
                    "median; `conf_t`, `matched_idx` and `loc_t` of the last timed calls compared with `torch.equal`",
        },
        "data loader": {
            "loader": "`pipeline.training.loop`'s input path: `SeededSamples` over the train split with train transforms, "
                      "batches from `SampleStream`, `collate`; loaded in-process on one thread (`worker_init`), "
                      "i.e. one worker",
            "training": f"the default config's training step ({default['model']}, {default['precision']}, "
                        f"{'channels-last' if default['channels_last'] else 'contiguous'}, its optimizer and "
                        "clipping) on one batch of that loader",
            "both": f"{default['batches']} rounds of one batch then one step after one untimed batch and step; "
                    "mean rates over the same rounds",
        },
    }


def render_markdown(result: dict[str, Any]) -> str:
    """``reports/bench.md`` from the full ``bench.json`` content."""
    return "\n".join([
        *_header(result), *_targets(result), *_methods(result), *_peak(result), *_inference(result),
        *_training(result), *_matching(result), *_loader(result), *_evaluation(result), *_profiles(result),
        *_sections(result),
    ]) + "\n"


def _header(result: dict[str, Any]) -> list[str]:
    machine = result["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"`{result['command']}` on {machine['device_name']} ({machine['device']}; CPU {machine['cpu']}, "
        f"{machine['cpu_id']}, {machine['cpu_capability']}, {machine['threads']} threads; ISA flags: "
        f"{', '.join(machine['isa_flags']) or 'none read'}), torch {machine['torch']}, torchvision "
        f"{machine['torchvision']}. Every "
        "figure is the median of its timed calls after warm-up (all calls are in bench.json), and both sides of "
        "every ratio are timed in turn (A B A B ...) with the same number of calls, so that a changing load falls "
        "on both. Absolute numbers are noisy on a shared machine; the ratios are what counts.",
    ]
    if machine["bf16_native"]:
        lines += ["", f"**bf16 is native here** ({machine['bf16_basis']}): the bf16 rows measure the models on "
                      "bf16 hardware."]
    else:
        lines += ["", f"**bf16 is emulated here** ({machine['bf16_basis']}): the bf16 figures and their ratios "
                      "describe that emulation, not the models on bf16 hardware (an AMX or AVX512-BF16 CPU); each "
                      f"bf16 model step gets {result['settings']['emulated_bf16_repeats']} timed call(s) after its "
                      "warm-up."]
    return lines


def _bf16_kind(machine: dict[str, Any]) -> str:
    return "native" if machine["bf16_native"] else "emulated"


def _precision(precision: str, machine: dict[str, Any]) -> str:
    """A table's precision cell: bf16 says whether it was native or emulated."""
    return f"bf16 ({_bf16_kind(machine)})" if precision == "bf16" else precision


def _targets(result: dict[str, Any]) -> list[str]:
    by_key = {t.key: t for t in TARGETS}
    lines = ["", "## Targets", "", "| target | bench.json key | measured | required | status |",
             "|---|---|---:|---:|---|"]
    for row in result["targets"]:
        target = by_key[row["key"]]
        status = "not measured" if row["met"] is None else ("met" if row["met"] else "**missed**")
        label = row["label"] + (f" ({_bf16_kind(result['machine'])} bf16)" if "bf16" in row["key"] else "")
        lines.append(f"| {label} | `{row['key']}` | {target.format(row['value'])} | "
                     f">= {target.format(row['minimum'])} | {status} |")
    lines.append(f"\nMatcher outputs identical to the seed's loop on the timed inputs (`conf_t`, `matched_idx`, "
                 f"`loc_t`): **{str(result['match_identical']).lower()}**.")
    return lines


def _methods(result: dict[str, Any]) -> list[str]:
    lines = ["", "## What each side did", "", "| figure | side | what it did |", "|---|---|---|"]
    for figure, sides in result["methods"].items():
        lines += [f"| {figure} | {side} | {text} |" for side, text in sides.items()]
    return lines


def _peak(result: dict[str, Any]) -> list[str]:
    lines = ["", "## Attainable peak", "", "| dtype | matmul GFLOP/s | 3x3 conv GFLOP/s | peak |", "|---|---:|---:|---|"]
    for dtype, entry in result["peak"].items():
        lines.append(f"| {_precision(dtype, result['machine'])} | {entry['matmul']['gflops']:.1f} | {entry['conv3x3']['gflops']:.1f} | "
                     f"{entry['gflops']:.1f} ({entry['kernel']}) |")
    return lines


def _inference(result: dict[str, Any]) -> list[str]:
    inference, flops = result["inference"], result["flops"]
    size = inference["image_size"]
    lines = [
        "", f"## Inference: {result['models']['yolact']} against {result['models']['maskrcnn']}, {size} px, "
            f"batch {inference['batch']}", "",
        "| model | precision | s/image | detections/image | masks | GFLOP/s (share of own-dtype peak) |",
        "|---|---|---:|---:|---|---:|",
    ]
    for model, name in MODEL_NAMES.items():
        for precision, entry in inference[model].items():
            masks = f"{entry['mask_dtype'].replace('torch.', '')} {'x'.join(map(str, entry['mask_shape']))}"
            lines.append(f"| {name} | {_precision(precision, result['machine'])} | {entry['seconds_per_image']:.3f} | "
                         f"{entry['detections_per_image']:.0f} | {masks} | {entry['gflops']:.1f} "
                         f"({entry['peak_share']:.0%}) |")
    lines += ["", "Speed over Mask R-CNN at equal precision: " + ", ".join(
        f"{p} {result[f'infer_{p}_vs_maskrcnn_{p}']:.2f}x" for p in inference["yolact"]) +
        f". Forward FLOPs per image (`torch.utils.flop_counter`, fp32, batch 1; 2 per multiply-add; mask "
        f"pasting and upsampling not counted): YOLACT {flops['yolact']['forward_gflops_per_image']:.4g} G, "
        f"Mask R-CNN {flops['maskrcnn']['forward_gflops_per_image']:.4g} G."]
    return lines


def _training(result: dict[str, Any]) -> list[str]:
    training, flops = result["training"], result["flops"]
    lines = [
        "", f"## Training: {result['models']['yolact']} against {result['models']['maskrcnn']}, "
            f"{training['image_size']} px, batch {training['batch']}", "",
        "| model | precision | img/s | GFLOP/s | share of own-dtype peak |", "|---|---|---:|---:|---:|",
    ]
    for model, name in MODEL_NAMES.items():
        for precision, entry in training[model].items():
            lines.append(f"| {name} | {_precision(precision, result['machine'])} | {entry['images_per_s']:.3f} | "
                         f"{entry['gflops']:.1f} | {entry['peak_share']:.0%} |")
    lines += ["", "Speed over Mask R-CNN at equal precision: " + ", ".join(
        f"{p} {result[f'train_{p}_vs_maskrcnn_{p}']:.2f}x" for p in training["yolact"]) +
        f". Training FLOPs per image (forward + loss + backward, fp32, batch 1): YOLACT "
        f"{flops['yolact']['train_gflops_per_image']:.4g} G, Mask R-CNN {flops['maskrcnn']['train_gflops_per_image']:.4g} G; "
        "GFLOP/s = these FLOPs x images/s."]
    return lines


def _matching(result: dict[str, Any]) -> list[str]:
    match = result["matching"]
    return [
        "",
        f"## Matching: batch {match['batch']} x {match['num_gt']} GTs x {match['num_priors']} priors",
        "",
        "| implementation | median seconds |",
        "|---|---:|",
        f"| `pipeline.models.priors.matching.match_batch` | {match['match_batch']['median_s']:.4f} |",
        f"| `benchmarks.reference_match`, image by image | {match['reference']['median_s']:.4f} |",
        "",
        f"Speed-up {match['speedup']:.1f}x; identical outputs: "
        + ", ".join(f"`{k}` {str(v).lower()}" for k, v in match["identical_by_output"].items()) + ".",
    ]


def _loader(result: dict[str, Any]) -> list[str]:
    default, gpu = result["loader"]["default"], result["loader"]["gpu_preset"]
    return [
        "",
        "## Training input path, one worker",
        "",
        "| input | batch | worker img/s | training img/s it feeds |",
        "|---|---:|---:|---:|",
        f"| default config (params.yaml, `data.num_workers` {default['num_workers']}) | {default['batch_size']} | "
        f"{default['worker_images_per_s']:.1f} | {default['train_images_per_s']:.1f} ({default['model']}) |",
        f"| GPU preset's input: {gpu['input']} | {gpu['batch_size']} | {gpu['worker_images_per_s']:.1f} | "
        f"{gpu['yolact_fp32_train_images_per_s']:.3f} ({result['models']['yolact']} fp32, above) |",
        "",
        f"The GPU preset's input runs on the default config's prepared images, which are smaller than COCO's; "
        f"feeding the fp32 training step measured here would take {gpu['workers_to_feed_yolact_fp32_here']:.2f} workers "
        f"(the preset has {gpu['num_workers']}); a GPU step at N img/s needs N / {gpu['worker_images_per_s']:.1f}.",
    ]


def _evaluation(result: dict[str, Any]) -> list[str]:
    ev = result["evaluation"]
    lines = [
        "",
        f"## Where evaluation time goes (default config, {ev['split']} split)",
        "",
        f"{ev['images']} images, {ev['detections_per_image']:.1f} detections per image, weights: {ev['weights']}; "
        f"{ev['ms_per_image']:.1f} ms per image in all, one pass, the evaluate stage's path (fp32). Bootstrap "
        "intervals, TIDE and figures are not included.",
        "",
        "| phase | ms/image | share |",
        "|---|---:|---:|",
        *(f"| {row['phase']} | {row['ms_per_image']:.2f} | {row['share']:.1%} |" for row in ev["phases"]),
    ]
    onnx = result.get("onnx_runtime")
    if onnx:
        lines += [
            "",
            f"## ONNX Runtime ({onnx['image_size']} px, batch 1, fp32, {onnx['threads']} threads)",
            "",
            "The YOLACT network's forward only (no post-processing), random weights: PyTorch eager (channels-last, "
            f"no_grad) against its `pipeline.deploy.export` graph (opset {onnx['opset']}) in ONNX Runtime's CPU provider with "
            "the same intra-op threads, timed in turn after the same warm-up, medians. Largest output difference "
            f"{onnx['largest_difference']:.1e}.",
            "",
            "| side | median s | speed-up |",
            "|---|---:|---:|",
            f"| PyTorch | {onnx['pytorch']['median_s']:.3f} | 1.00 |",
            f"| ONNX Runtime | {onnx['onnxruntime']['median_s']:.3f} | {onnx['onnxruntime_vs_pytorch']:.2f} |",
        ]
    return lines


def _profiles(result: dict[str, Any]) -> list[str]:
    if not result.get("profiles"):
        return []
    by_key = {t.key: t for t in TARGETS}
    lines = ["", "## What is in the way of the missed targets"]
    for key, profile in result["profiles"].items():
        lines += ["", f"### {by_key[key].label}", "", *_analysis(key, result), profile["what"]]
        for name, rows in profile["tables"].items():
            lines += ["", f"{name}:", "", "| op | calls | self ms | share |", "|---|---:|---:|---:|"]
            lines += [f"| `{r['op']}` | {r['calls']} | {r['self_ms']:.1f} | {r['share']:.1%} |" for r in rows]
    return lines


def _analysis(key: str, result: dict[str, Any]) -> list[str]:
    """Measured facts that bound a target, before its profile."""
    flops = result["flops"]
    minimum = next(t.minimum for t in TARGETS if t.key == key)
    if key.endswith(("_vs_maskrcnn_fp32", "_vs_maskrcnn_bf16")):
        kind, precision = key.split("_")[0], key.rsplit("_", 1)[1]
        section = result["inference" if kind == "infer" else "training"]
        per_image = "forward_gflops_per_image" if kind == "infer" else "train_gflops_per_image"
        flops_ratio = flops["maskrcnn"][per_image] / flops["yolact"][per_image]
        ours, theirs = section["yolact"][precision]["gflops"], section["maskrcnn"][precision]["gflops"]
        return [f"Mask R-CNN needs {flops_ratio:.2f}x our FLOPs per image; our {precision} step runs at {ours:.1f} "
                f"GFLOP/s, its {precision} step at {theirs:.1f} ({ours / theirs:.2f}x), and the speed ratio is the "
                f"product of the two. {minimum:g}x would take {minimum / flops_ratio:.2f}x its GFLOP/s at these "
                "FLOPs, or fewer FLOPs (or less uncounted work, such as mask upsampling) per image.", ""]
    if key == "train_bf16_peak_share":
        fp32, bf16 = result["training"]["yolact"]["fp32"], result["training"]["yolact"]["bf16"]
        peak = result["peak"]["bf16"]
        return [f"bf16 training runs at {bf16['gflops']:.1f} GFLOP/s against a bf16 peak of {peak['gflops']:.1f} "
                f"({peak['kernel']}); the fp32 step uses {fp32['peak_share']:.0%} of the fp32 peak and is "
                f"{fp32['images_per_s'] / bf16['images_per_s']:.1f}x faster than the bf16 step.", ""]
    if key == "loader_vs_train":
        loader = result["loader"]["default"]
        return [f"One worker delivers {loader['worker_images_per_s']:.1f} img/s; training consumes "
                f"{loader['train_images_per_s']:.1f} (`data.num_workers` is {loader['num_workers']}).", ""]
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
