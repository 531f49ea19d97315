"""``python -m benchmarks.gpu_check``: one line and exit 0 without CUDA; every section on tiny sizes on the CPU;
runnable where MLflow, DVC and pycocotools are not installed (the GPU machine)."""
from __future__ import annotations

import json
import subprocess

from benchmarks.gpu_check import NO_CUDA, errors
from tests.conftest import PYTHON, REPO, stage_env

# Runs the module as `python -m` would, with the named packages made unimportable (None in sys.modules).
HIDDEN = ("import runpy, sys; sys.modules.update(dict.fromkeys({hidden!r})); "
          "sys.argv = ['benchmarks.gpu_check', *sys.argv[1:]]; runpy.run_module('benchmarks.gpu_check', run_name='__main__')")
SECTIONS = ("environment", "settings", "train", "inference", "evaluate", "sync_bn")


def gpu_check(*args: str, hidden: tuple[str, ...] = ("mlflow", "dvc"), **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-c", HIDDEN.format(hidden=hidden), *args], cwd=REPO,
                          env=stage_env(OMP_NUM_THREADS="1", **env), capture_output=True, text=True, timeout=300)


def test_without_cuda_one_line_and_exit_0():
    proc = gpu_check(CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [NO_CUDA]


def test_quick_on_the_cpu_runs_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = gpu_check("--quick", "--device", "cpu", "--out", str(out), CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert set(SECTIONS) <= set(report) and errors(report) == [] and report["failed"] == []
    for arch in ("yolact", "mask_rcnn"):
        assert "skipped" in report["train"][arch]["fp16"]  # fp16 autocast needs CUDA
        bf16 = report["train"][arch]["bf16"]
        assert bf16["loss_finite"] and bf16["images_per_s"] > 0 and len(bf16["step_seconds"]) == 2
        for key in ("batch1_fp32", "batch1_bf16", "batch2_fp32", "batch2_bf16"):
            assert report["inference"][arch][key]["images_per_s"] > 0
        assert report["evaluate"][arch]["ran"] and "segm_AP" in report["evaluate"][arch]["metric_keys"]
    assert report["sync_bn"]["ok"] and report["sync_bn"]["world_size"] == 1 and report["sync_bn"]["sync_bn_modules"] > 0


def test_runs_without_mlflow_dvc_or_pycocotools(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = gpu_check("--quick", "--device", "cpu", "--out", str(out), hidden=("mlflow", "dvc", "pycocotools"),
                     CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["evaluate"] == {"skipped": "pycocotools not installed"} and errors(report) == []


def test_a_failing_section_is_recorded_and_fails_the_run():
    report = {"train": {"yolact": {"fp16": {"error": "boom"}, "bf16": {"images_per_s": 1.0}}},
              "evaluate": {"skipped": "pycocotools not installed"}, "sync_bn": {"error": "x"}}
    assert errors(report) == ["train.yolact.fp16", "sync_bn"]
