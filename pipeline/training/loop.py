"""The training loop: one optimizer step per iteration, logging, validation, checkpoints and resume.

Reproducibility: the sample stream (:mod:`pipeline.training.sampling`) fixes which images and augmentations each
step sees; together with the checkpointed model, optimizer and RNG states this makes an
interrupted-and-resumed run end with the same weights as an uninterrupted one. Only a checkpoint of the
same code, data and params is resumed (:mod:`pipeline.training.checkpoints`).
"""
from __future__ import annotations

import copy
import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pipeline.training.checkpoints import checkpoint_path, provenance, resumable_state, save_checkpoint
from pipeline.config import ConfigError, Params, to_dict
from pipeline.data.dataset import InstanceDataset, collate
from pipeline.data.transforms import build_transforms
from pipeline.data.layout import read_label_map
from pipeline.utils.distributed import Dist, autocast_dtype, distributed_from_env, resolve_precision, select_device
from pipeline.utils.errors import PipelineError
from pipeline.utils.io import atomic_write_text
from pipeline.models.networks import network
from pipeline.training.sampling import SampleStream, SeededSamples, step_seed, worker_init
from pipeline.training.schedule import build_optimizer, learning_rate

VALIDATION_COLUMNS = ("val_bbox_AP", "val_segm_AP")
# What rebuilds a trained model (architecture, input handling, class scoring); stored in models/model.pt.
MODEL_SECTIONS = ("seed", "input", "model", "anchors", "loss")


@dataclass
class TrainOutputs:
    model_path: Path
    log_path: Path
    checkpoint_dir: Path


LossFn = Callable[..., dict[str, Tensor]]
Validator = Callable[[nn.Module], dict[str, float]]


def train(
    params: Params,
    prepared_dir: Path,
    outputs: TrainOutputs,
    on_log: Callable[[dict[str, float]], None] = lambda row: None,
    loss_fn: LossFn | None = None,
    progress: bool = True,
    extra_payload: dict[str, Any] | None = None,
    validate: Validator | None = None,
) -> dict[str, float]:
    """Train from ``params`` (resuming a checkpoint of the same provenance) and write the final model.

    ``validate(model)`` scores the val split (``{"val_bbox_AP", "val_segm_AP"}``) every
    ``train.eval_every`` iterations and at the end, on rank 0; with ``train.keep_best`` the saved model
    is the one with the best val mask AP. Returns the final logged row; ``on_log`` receives every row.
    ``loss_fn`` replaces the loss of the architecture (``model.arch``, :mod:`pipeline.models.networks`).
    """
    tp = params.train
    net = network(params.model.arch)
    loss_fn = loss_fn or net.loss
    dinfo = distributed_from_env()
    if tp.batch_size % dinfo.world_size:
        raise PipelineError(
            f"train.batch_size: {tp.batch_size} is not divisible by the {dinfo.world_size} processes"
        )
    if tp.keep_best and validate is None:
        raise PipelineError("train.keep_best: needs validation during training (train.eval_every > 0)")
    device = select_device(tp.device, dinfo.local_rank)
    precision = resolve_precision(tp.precision, device)
    amp_dtype = autocast_dtype(precision, device)

    label_map = read_label_map(prepared_dir)
    dataset = InstanceDataset(prepared_dir, "train", build_transforms(params.input, train=True))
    if len(dataset) == 0:
        raise PipelineError(f"{prepared_dir}: the prepared train split has no images")

    torch.manual_seed(params.seed)
    model = net.build(params, num_classes=len(label_map)).to(device)
    if tp.sync_bn:
        if device.type != "cuda":
            raise ConfigError("train.sync_bn", f"SyncBatchNorm needs CUDA, training runs on {device.type}")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if tp.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, tp)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")

    run_provenance = {**provenance(params, prepared_dir), "precision": precision}
    ckpt_path = checkpoint_path(outputs.checkpoint_dir, run_provenance)
    start, log_rows, best = 0, [], None
    state = resumable_state(ckpt_path, run_provenance)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        start, log_rows, best = state["iteration"], _csv_rows(state["log"]), state.get("best")
        if dinfo.is_main:
            print(f"resuming from {ckpt_path} at iteration {start}/{tp.iterations}")
    if dinfo.world_size > 1:
        check_same_start(start, ckpt_path.parent, device)

    ddp_model: nn.Module = model
    if dinfo.world_size > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    loader = DataLoader(
        SeededSamples(dataset),
        batch_sampler=SampleStream(len(dataset), tp.batch_size, params.seed, start, dinfo),
        collate_fn=collate,
        num_workers=params.data.num_workers,
        worker_init_fn=worker_init,
        pin_memory=device.type == "cuda",
        persistent_workers=params.data.num_workers > 0,
    )
    bar = None
    if progress and dinfo.is_main:
        from tqdm import tqdm

        bar = tqdm(total=tp.iterations, initial=start, desc="train", unit="it", mininterval=1.0, dynamic_ncols=True)

    model.train()
    last_row: dict[str, float] = _csv_last(log_rows)
    tick = time.perf_counter()
    batches = iter(loader)
    for iteration in range(start, tp.iterations):
        images, targets = next(batches)
        images = images.to(device, non_blocking=True)
        if tp.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = [{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in t.items()} for t in targets]
        lr = learning_rate(iteration, tp)
        for group in optimizer.param_groups:
            group["lr"] = lr

        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            predictions = net.forward(ddp_model, images, targets, step_seed(params.seed, iteration, dinfo))
        losses = loss_fn(predictions, targets, params.loss, world_size=dinfo.world_size)
        _check_finite(losses, net.loss_terms, iteration + 1, ckpt_path)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        if tp.grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
        scaler.step(optimizer)
        scaler.update()

        done = iteration + 1
        validating = validate is not None and (done == tp.iterations or (tp.eval_every and done % tp.eval_every == 0))
        if done % tp.log_every == 0 or done == tp.iterations or validating:
            now = time.perf_counter()
            row = {"iteration": done, "lr": lr, **_reduced(losses, net.loss_terms, dinfo)}
            row["images_per_s"] = tp.batch_size * (done - (last_row.get("iteration") or start)) / max(now - tick, 1e-9)
            # training wall-clock so far, validation excluded (a resumed run continues the interrupted one's)
            row["seconds"] = last_row.get("seconds", 0.0) + (now - tick)
            if validating and dinfo.is_main:
                row.update(_validated(validate, model))
                if tp.keep_best and (best is None or row["val_segm_AP"] > best["score"]):
                    best = {"iteration": done, "score": row["val_segm_AP"],
                            "state_dict": copy.deepcopy(model.state_dict())}
            if validating and dinfo.world_size > 1:
                dist.barrier()
            tick, last_row = time.perf_counter(), row
            if dinfo.is_main:
                log_rows.append(row)
                on_log(row)
                if bar is not None:
                    bar.set_postfix({k: f"{row[k]:.3f}" for k in ("loss", *net.loss_terms)} | {"img/s": f"{row['images_per_s']:.1f}"}, refresh=False)
        if bar is not None:
            bar.update(1)
        if dinfo.is_main and (done % tp.checkpoint_every == 0 or done == tp.iterations):
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "rng": torch.get_rng_state(), "iteration": done, "log": _csv_text(log_rows, net.loss_terms),
                "provenance": run_provenance, "best": best,
            })
    if bar is not None:
        bar.close()

    if dinfo.is_main:
        weights = best["state_dict"] if tp.keep_best else model.state_dict()
        payload = {
            "state_dict": weights, "params": {name: _section(params, name) for name in MODEL_SECTIONS},
            "label_map": label_map, "iterations": tp.iterations, "provenance": run_provenance, "precision": precision,
            "selected_iteration": best["iteration"] if tp.keep_best else tp.iterations, **(extra_payload or {}),
        }
        save_checkpoint(outputs.model_path, payload)
        atomic_write_text(outputs.log_path, _csv_text(log_rows, net.loss_terms))
        ckpt_path.unlink(missing_ok=True)  # finished: a re-run trains again instead of "resuming" at the end
    if dinfo.world_size > 1:
        dist.barrier()
    return last_row


def check_same_start(start: int, checkpoint_dir: Path, device: torch.device) -> None:
    """Every process must resume from the same iteration; nodes that do not share the checkpoint folder
    would otherwise go on from different states (only rank 0 writes checkpoints)."""
    mine = torch.tensor([start], device=device)
    starts = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(starts, mine)
    found = [int(t.item()) for t in starts]
    if len(set(found)) > 1:
        raise PipelineError(
            f"{checkpoint_dir}: processes would resume from different iterations {found} (by rank); "
            "the checkpoint folder must be on storage that every node shares"
        )


def _section(params: Params, name: str) -> Any:
    value = getattr(params, name)
    return to_dict(value) if hasattr(value, "__dataclass_fields__") else value


def _validated(validate: Validator, model: nn.Module) -> dict[str, float]:
    """Val scores of ``model``; training's RNG and train mode are left as they were."""
    with torch.random.fork_rng(devices=[]):
        model.eval()
        try:
            scores = validate(model)
        finally:
            model.train()
    return {k: float(scores[k]) for k in VALIDATION_COLUMNS}


def log_columns(loss_terms: Sequence[str]) -> tuple[str, ...]:
    """The columns of the training log (``reports/train/log.csv``) of an architecture's loss terms."""
    return ("iteration", "lr", "loss", *loss_terms, "images_per_s", "seconds", *VALIDATION_COLUMNS)


def _check_finite(losses: dict[str, Tensor], loss_terms: Sequence[str], iteration: int, ckpt_path: Path) -> None:
    for name in (*loss_terms, "total"):
        value = losses[name]
        if not torch.isfinite(value).all():
            kept = f"last good checkpoint kept at {ckpt_path}" if ckpt_path.exists() else "no checkpoint saved yet"
            raise PipelineError(
                f"non-finite loss at iteration {iteration}: {name} = {value.item()}; training stopped ({kept})"
            )


def _reduced(losses: dict[str, Tensor], loss_terms: Sequence[str], dinfo: Dist) -> dict[str, float]:
    values = torch.stack([losses["total"].detach().float(), *(losses[k].detach().float() for k in loss_terms)])
    if dinfo.world_size > 1:
        dist.all_reduce(values)
        values /= dinfo.world_size
    total, *terms = values.tolist()
    return {"loss": total, **dict(zip(loss_terms, terms))}


def _csv_text(rows: Sequence[dict[str, float]], loss_terms: Sequence[str]) -> str:
    columns = log_columns(loss_terms)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in columns})
    return buffer.getvalue()


def _csv_rows(text: str) -> list[dict[str, float]]:
    rows = list(csv.DictReader(io.StringIO(text)))
    return [{k: (int(v) if k == "iteration" else float(v)) for k, v in row.items() if v != ""} for row in rows]


def _csv_last(rows: list[dict[str, float]]) -> dict[str, float]:
    return dict(rows[-1]) if rows else {}
