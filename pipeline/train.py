"""The training loop: SGD or AdamW with warm-up and step or cosine decay, checkpoint/resume, AMP, DDP.

Reproducibility: every sample's augmentation is seeded by ``(seed, position in the sample stream)``,
so the data a step sees does not depend on the number of workers, on the number of DDP processes,
or on where a run was interrupted; together with the checkpointed model, optimizer and RNG states
this makes an interrupted-and-resumed run end with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .config import Params, TrainParams, to_dict
from .data import InstanceDataset, build_transforms, collate, read_label_map
from .errors import PipelineError
from .io import atomic_file, atomic_write_text
from .loss import yolact_loss
from .model import build_model

LOSS_TERMS = ("box", "conf", "mask", "semantic")
LOG_COLUMNS = ("iteration", "lr", "loss", *LOSS_TERMS, "images_per_s")


# --------------------------------------------------------------------------------------------------
# Schedule


def learning_rate(iteration: int, train: TrainParams) -> float:
    """LR for 0-based ``iteration``: linear warm-up from ``warmup_lr``, then step or cosine decay.

    Cosine decays from ``lr`` after the warm-up to 0 at ``iterations``; ``lr_steps`` are then unused.
    """
    if iteration < train.warmup_iterations:
        return train.warmup_lr + (train.lr - train.warmup_lr) * iteration / train.warmup_iterations
    if train.lr_schedule == "cosine":
        progress = (iteration - train.warmup_iterations) / max(train.iterations - train.warmup_iterations, 1)
        return 0.5 * train.lr * (1.0 + math.cos(math.pi * progress))
    return train.lr * train.lr_gamma ** sum(iteration >= step for step in train.lr_steps)


def build_optimizer(model: nn.Module, train: TrainParams) -> torch.optim.Optimizer:
    """SGD with momentum (YOLACT) or AdamW; no weight decay on norms and biases."""
    decay, no_decay = _parameter_groups(model)
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.lr, betas=(train.momentum, 0.999), fused=True)
    return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum)


# --------------------------------------------------------------------------------------------------
# Devices, precision, distribution


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_from_env() -> Dist:
    """The torchrun process group, initialised once (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def select_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise PipelineError("train.device: cuda requested but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "fp16" and device.type != "cuda":
        raise PipelineError("train.precision: fp16 needs CUDA; use bf16 on the CPU")
    return torch.bfloat16 if precision == "bf16" else torch.float16


# --------------------------------------------------------------------------------------------------
# Data


class SeededSamples(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` runs its random transforms under ``seed``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class SampleStream:
    """Batches of ``(index, seed)`` for iterations ``start, start+1, ...``: an endless sequence of
    seeded epoch permutations, each global batch split across DDP ranks (the role of a
    DistributedSampler, but resumable at any iteration)."""

    def __init__(self, num_samples: int, global_batch: int, seed: int, start_iteration: int, dist_info: Dist):
        self.n, self.batch, self.seed, self.start, self.dist = num_samples, global_batch, seed, start_iteration, dist_info
        self.per_rank = global_batch // dist_info.world_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        iteration = self.start
        cached_epoch, order = -1, None
        while True:
            first = iteration * self.batch + self.dist.rank * self.per_rank
            batch = []
            for position in range(first, first + self.per_rank):
                epoch = position // self.n
                if epoch != cached_epoch:
                    g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                    order, cached_epoch = torch.randperm(self.n, generator=g), epoch
                batch.append((int(order[position % self.n]), self.seed * 1_000_000_007 + position))
            yield batch
            iteration += 1


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)


# --------------------------------------------------------------------------------------------------
# Checkpoints


def config_fingerprint(params: Params) -> str:
    """What must match for a checkpoint to be resumed: everything but tracking and evaluation."""
    relevant = {k: v for k, v in to_dict(params).items() if k not in ("mlflow", "eval", "ablation")}
    relevant["train"] = {k: v for k, v in relevant["train"].items() if k not in ("checkpoint_every", "log_every")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_file(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainOutputs:
    model_path: Path
    log_path: Path
    checkpoint_dir: Path


LossFn = Callable[..., dict[str, Tensor]]


def train(
    params: Params,
    prepared_dir: Path,
    outputs: TrainOutputs,
    on_log: Callable[[dict[str, float]], None] = lambda row: None,
    loss_fn: LossFn = yolact_loss,
    progress: bool = True,
    extra_payload: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Train from ``params`` (resuming a matching checkpoint) and write the final model.

    Returns the final logged row. ``on_log`` receives every logged row on rank 0.
    """
    tp = params.train
    dinfo = distributed_from_env()
    if tp.batch_size % dinfo.world_size:
        raise PipelineError(
            f"train.batch_size: {tp.batch_size} is not divisible by the {dinfo.world_size} processes"
        )
    device = select_device(tp.device, dinfo.local_rank)
    amp_dtype = autocast_dtype(tp.precision, device)

    label_map = read_label_map(prepared_dir)
    dataset = InstanceDataset(prepared_dir, "train", build_transforms(params.input, train=True))
    if len(dataset) == 0:
        raise PipelineError(f"{prepared_dir}: the prepared train split has no images")

    torch.manual_seed(params.seed)
    model = build_model(params, num_classes=len(label_map)).to(device)
    if tp.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, tp)
    scaler = torch.amp.GradScaler("cuda", enabled=tp.precision == "fp16")

    fingerprint = config_fingerprint(params)
    ckpt_path = outputs.checkpoint_dir / f"{fingerprint}.pt"
    start, log_rows = 0, []
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        start, log_rows = state["iteration"], _csv_rows(state["log"])
        if dinfo.is_main:
            print(f"resuming from {ckpt_path} at iteration {start}/{tp.iterations}")

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
        worker_init_fn=_worker_init,
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
            predictions = ddp_model(images)
        losses = loss_fn(predictions, targets, params.loss, world_size=dinfo.world_size)
        _check_finite(losses, iteration + 1, ckpt_path)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        if tp.grad_clip is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), tp.grad_clip)
        scaler.step(optimizer)
        scaler.update()

        done = iteration + 1
        if done % tp.log_every == 0 or done == tp.iterations:
            now = time.perf_counter()
            row = {"iteration": done, "lr": lr, **_reduced(losses, dinfo)}
            row["images_per_s"] = tp.batch_size * (done - (last_row.get("iteration") or start)) / max(now - tick, 1e-9)
            tick, last_row = now, row
            if dinfo.is_main:
                log_rows.append(row)
                on_log(row)
                if bar is not None:
                    bar.set_postfix({k: f"{row[k]:.3f}" for k in ("loss", *LOSS_TERMS)} | {"img/s": f"{row['images_per_s']:.1f}"}, refresh=False)
        if bar is not None:
            bar.update(1)
        if dinfo.is_main and (done % tp.checkpoint_every == 0 or done == tp.iterations):
            save_checkpoint(ckpt_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "rng": torch.get_rng_state(), "iteration": done, "log": _csv_text(log_rows),
            })
    if bar is not None:
        bar.close()

    if dinfo.is_main:
        payload = {
            "state_dict": model.state_dict(), "params": to_dict(params), "label_map": label_map,
            "iterations": tp.iterations, **(extra_payload or {}),
        }
        save_checkpoint(outputs.model_path, payload)
        atomic_write_text(outputs.log_path, _csv_text(log_rows))
    if dinfo.world_size > 1:
        dist.barrier()
    return last_row


def _parameter_groups(model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    """Weight decay on conv/linear weights only, not on biases or norm parameters."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return decay, no_decay


def _check_finite(losses: dict[str, Tensor], iteration: int, ckpt_path: Path) -> None:
    for name in (*LOSS_TERMS, "total"):
        value = losses[name]
        if not torch.isfinite(value).all():
            kept = f"last good checkpoint kept at {ckpt_path}" if ckpt_path.exists() else "no checkpoint saved yet"
            raise PipelineError(
                f"non-finite loss at iteration {iteration}: {name} = {value.item()}; training stopped ({kept})"
            )


def _reduced(losses: dict[str, Tensor], dinfo: Dist) -> dict[str, float]:
    values = torch.stack([losses["total"].detach().float(), *(losses[k].detach().float() for k in LOSS_TERMS)])
    if dinfo.world_size > 1:
        dist.all_reduce(values)
        values /= dinfo.world_size
    total, *terms = values.tolist()
    return {"loss": total, **dict(zip(LOSS_TERMS, terms))}


def _csv_text(rows: Sequence[dict[str, float]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in LOG_COLUMNS})
    return buffer.getvalue()


def _csv_rows(text: str) -> list[dict[str, float]]:
    rows = list(csv.DictReader(io.StringIO(text)))
    return [{k: (int(v) if k == "iteration" else float(v)) for k, v in row.items()} for row in rows]


def _csv_last(rows: list[dict[str, float]]) -> dict[str, float]:
    return dict(rows[-1]) if rows else {}
