"""The train loop: schedule, sample stream, learning, determinism, resume, NaN guard, DDP."""
import math
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from pipeline import config
from pipeline.utils.errors import PipelineError
from pipeline.training.checkpoints import load_checkpoint
from pipeline.utils.distributed import Dist
from pipeline.training.sampling import SampleStream
from pipeline.training.schedule import build_optimizer, learning_rate
from pipeline.training.loop import TrainOutputs, train
from tests.conftest import PYTHON, free_port, new_store, stage_env
from tests.tiny import copy_project, kill_train_after_checkpoint


def params_for(project: Path, **dotted) -> config.Params:
    return config.replace(config.load(project / "params.yaml"), **dotted)


def outputs_in(directory: Path) -> TrainOutputs:
    return TrainOutputs(directory / "model.pt", directory / "log.csv", directory / "checkpoints")


def test_learning_rate_warms_up_linearly_then_steps():
    tp = config.from_dict({"train": {"lr": 0.01, "warmup_lr": 0.001, "warmup_iterations": 10,
                                     "lr_steps": [20, 30], "lr_gamma": 0.1}}).train
    assert learning_rate(0, tp) == pytest.approx(0.001)
    assert learning_rate(5, tp) == pytest.approx(0.0055)
    assert learning_rate(10, tp) == pytest.approx(0.01)
    assert learning_rate(19, tp) == pytest.approx(0.01)
    assert learning_rate(20, tp) == pytest.approx(0.001)
    assert learning_rate(30, tp) == pytest.approx(0.0001)


def test_cosine_schedule_decays_from_the_peak_to_zero_after_the_warm_up():
    tp = config.from_dict({"train": {"lr": 0.01, "warmup_lr": 0.001, "warmup_iterations": 10, "iterations": 110,
                                     "lr_schedule": "cosine", "lr_steps": []}}).train
    assert learning_rate(5, tp) == pytest.approx(0.0055)
    assert learning_rate(10, tp) == pytest.approx(0.01)
    assert learning_rate(60, tp) == pytest.approx(0.005)
    assert learning_rate(109, tp) == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    rates = [learning_rate(i, tp) for i in range(10, 110)]
    assert all(a > b for a, b in zip(rates, rates[1:]))


@pytest.mark.parametrize("name, kind", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_optimizer_choice_and_no_decay_on_norms_and_biases(name, kind):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    tp = config.from_dict({"train": {"optimizer": name, "lr": 0.003, "momentum": 0.8, "weight_decay": 0.05}}).train
    optimizer = build_optimizer(model, tp)
    assert type(optimizer) is kind
    decay, no_decay = optimizer.param_groups
    assert [p.shape for p in decay["params"]] == [model[0].weight.shape] and decay["weight_decay"] == 0.05
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0
    assert (optimizer.defaults["betas"][0] if name == "adamw" else optimizer.defaults["momentum"]) == 0.8


def test_sample_stream_is_resumable_and_splits_the_global_batch():
    def batches(stream, count):
        it = iter(stream)
        return [next(it) for _ in range(count)]

    full = batches(SampleStream(10, 4, seed=3, start_iteration=0, dist_info=Dist()), 6)
    assert sorted(i for i, _ in full[0] + full[1] + [full[2][0], full[2][1]]) == list(range(10))  # one epoch
    assert batches(SampleStream(10, 4, 3, 4, Dist()), 2) == full[4:6]  # resume at iteration 4
    rank0 = batches(SampleStream(10, 4, 3, 0, Dist(0, 2)), 6)
    rank1 = batches(SampleStream(10, 4, 3, 0, Dist(1, 2)), 6)
    assert [a + b for a, b in zip(rank0, rank1)] == full
    seeds = [s for batch in full for _, s in batch]
    assert len(set(seeds)) == len(seeds)  # a fresh augmentation seed for every sample


def test_loss_falls_on_a_tiny_config(tiny_project, tmp_path):
    params = params_for(tiny_project, **{"train.iterations": 36, "train.lr_steps": [], "train.checkpoint_every": 100})
    train(params, tiny_project / "data/prepared", outputs_in(tmp_path), progress=False)
    log = pd.read_csv(tmp_path / "log.csv")
    first, last = log["loss"][:6].mean(), log["loss"][-6:].mean()
    assert list(log["iteration"]) == list(range(1, 37))
    assert last < 0.8 * first, (first, last)


def _weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_params_give_the_same_weights(tiny_project, tmp_path):
    params = params_for(tiny_project, **{"train.iterations": 6})
    train(params, tiny_project / "data/prepared", outputs_in(tmp_path / "a"), progress=False)
    train(params, tiny_project / "data/prepared", outputs_in(tmp_path / "b"), progress=False)
    _assert_same_weights(_weights(tmp_path / "a/model.pt"), _weights(tmp_path / "b/model.pt"))


def test_killed_run_resumes_to_the_uninterrupted_weights(tiny_project, tmp_path):
    iterations = 10
    overrides = {"train": {"iterations": iterations, "checkpoint_every": 2}}
    project = tmp_path / "killed"
    copy_project(tiny_project, project, ("mlflow.db*", "mlartifacts", "models"))
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"].update(overrides["train"])
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    reference = tmp_path / "reference"
    train(config.load(project / "params.yaml"), project / "data/prepared", outputs_in(reference), progress=False)

    env = stage_env(MLFLOW_TRACKING_URI=new_store(tmp_path / "mlflow.db"))
    killed_at = kill_train_after_checkpoint(project, env)
    assert 4 <= killed_at < iterations
    assert not (project / "models/model.pt").exists()

    rerun = subprocess.run([PYTHON, "-m", "stages.train"], cwd=project, env=env, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stdout + rerun.stderr
    _assert_same_weights(_weights(project / "models/model.pt"), _weights(reference / "model.pt"))
    assert (project / "reports/train/log.csv").read_text().count("\n") == iterations + 1


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_project, tmp_path):
    from pipeline.models.yolact.loss import yolact_loss

    calls = {"n": 0}

    def poisoned(predictions, targets, loss_params, **kwargs):
        losses = yolact_loss(predictions, targets, loss_params, **kwargs)
        calls["n"] += 1
        if calls["n"] == 6:
            losses["mask"] = losses["mask"] * float("nan")
            losses["total"] = losses["total"] + losses["mask"]
        return losses

    params = params_for(tiny_project, **{"train.iterations": 10, "train.checkpoint_every": 4})
    outputs = outputs_in(tmp_path)
    with pytest.raises(PipelineError, match=r"non-finite loss at iteration 6: mask = nan.*last good checkpoint kept"):
        train(params, tiny_project / "data/prepared", outputs, loss_fn=poisoned, progress=False)
    (checkpoint,) = outputs.checkpoint_dir.glob("[!.]*.pt")
    assert load_checkpoint(checkpoint)["iteration"] == 4
    assert not outputs.model_path.exists()


@pytest.fixture(scope="module")
def ddp_comparison(tiny_project, tmp_path_factory):
    """A tiny project set up for DDP comparisons, and its weights from one process with the same global batch.

    BatchNorm statistics are per process under DDP, so the backbone's BN runs in eval mode here
    (model.backbone.norm_eval) to compare like with like; the loss is normalised by the global number
    of positives. In fp32 what remains is float summation order: weights agree to 1e-4 after 4 optimizer steps.
    """
    root = tmp_path_factory.mktemp("ddp")
    project = root / "project"
    copy_project(tiny_project, project, ("mlflow.db*", "mlartifacts", "models"))
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"].update({"iterations": 4, "checkpoint_every": 100, "batch_size": 4, "precision": "fp32"})  # explicit: the comparison below is an fp32 tolerance
    raw["model"]["backbone"]["norm_eval"] = True
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    single = root / "single"
    train(config.load(project / "params.yaml"), project / "data/prepared", outputs_in(single), progress=False)
    return project, _weights(single / "model.pt")


def _launch_two_nodes(torchrun: Path, project: Path, env: dict) -> list[subprocess.CompletedProcess]:
    """Two torchrun agents of one process each, meeting at a c10d rendezvous on 127.0.0.1, as two machines
    of one job would (``srun torchrun --nnodes 2 ...``); they share this filesystem like nodes on shared storage."""
    port = free_port()
    command = [str(torchrun), "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=multinode-test", "-m", "stages.train"]
    nodes = [subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    return [subprocess.CompletedProcess(command, node.returncode, out, err) for node, (out, err) in zip(nodes, outputs)]


@pytest.mark.parametrize("layout", ["one_node_two_processes", "two_nodes"])
def test_torchrun_matches_one_process_with_the_same_global_batch(ddp_comparison, tmp_path, layout):
    """DDP on CPU (gloo), 2 x 2 images against 1 x 4 images: same samples, same augmentation; on one
    node (``--standalone``) and on two single-process nodes joined by a c10d rendezvous."""
    project, one = ddp_comparison
    (project / "models/model.pt").unlink(missing_ok=True)
    torchrun = Path(PYTHON).parent / "torchrun"
    env = stage_env(MLFLOW_TRACKING_URI=new_store(tmp_path / "mlflow.db"), OMP_NUM_THREADS="1")
    if layout == "two_nodes":
        procs = _launch_two_nodes(torchrun, project, env)
    else:
        procs = [subprocess.run([str(torchrun), "--standalone", "--nproc-per-node=2", "-m", "stages.train"],
                                cwd=project, env=env, capture_output=True, text=True, timeout=300)]
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = _weights(project / "models/model.pt")
    assert ddp.keys() == one.keys()
    worst = max(float((ddp[k].float() - one[k].float()).abs().max()) for k in one)
    print(f"{layout}: largest weight difference to one process {worst:.2e}")
    assert worst < 1e-4, worst


def test_sync_bn_is_a_config_error_off_cuda(tiny_project, tmp_path):
    with pytest.raises(config.ConfigError, match="train.sync_bn"):
        params_for(tiny_project, **{"train.sync_bn": True, "train.device": "cpu"})
    if not torch.cuda.is_available():
        params = params_for(tiny_project, **{"train.sync_bn": True, "train.device": "auto", "train.iterations": 1})
        with pytest.raises(config.ConfigError, match="train.sync_bn: SyncBatchNorm needs CUDA"):
            train(params, tiny_project / "data/prepared", outputs_in(tmp_path), progress=False)


def test_auto_precision_uses_bf16_only_where_the_cpu_has_it():
    from pipeline.utils.distributed import autocast_dtype, resolve_precision
    from pipeline.utils.hardware import BF16_FLAGS, cpu_description

    cpu = torch.device("cpu")
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported() and bool(set(BF16_FLAGS) & set(cpu_description()["isa_flags"]))
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert autocast_dtype("auto", cpu) == (torch.bfloat16 if native else None)
    assert resolve_precision("bf16", cpu) == "bf16" and resolve_precision("fp32", cpu) == "fp32"


def _resume_from(rank: int, port: int, starts: list[int], errors) -> None:
    import torch.distributed as dist

    from pipeline.training.loop import check_same_start

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(starts))
    try:
        check_same_start(starts[rank], Path("models/checkpoints"), torch.device("cpu"))
    except PipelineError as err:
        errors.put(str(err))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("starts, fails", [([3, 3], False), ([3, 0], True)])
def test_nodes_without_a_shared_checkpoint_folder_refuse_to_resume(starts, fails):
    """Rank 0 found a checkpoint that rank 1 (on a node without it) did not: both stop, naming the folder."""
    import torch.multiprocessing as mp

    port = free_port()
    errors = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_resume_from, args=(port, starts, errors), nprocs=len(starts))
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    assert len(messages) == (len(starts) if fails else 0)
    for message in messages:
        assert "models/checkpoints: processes would resume from different iterations [3, 0]" in message
