"""The alias ``champion`` of the registered model ``yolact`` (pipeline.tracking.registry): it moves only to a higher
test mask AP measured on the champion's test ground truth (the md5 of ``gt_test.json``), and evaluations running at
the same time on different machines (clones with their own ``.mlflow-spool``) leave it on the best version.
Against a real ``mlflow server`` of this module's own, with versions made directly (no training)."""
import math
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline.tracking.registry import (
    CHAMPION, GT_TAG, MODEL_NAME, SETTLE_ROUNDS, champion_choice, outcome, record_evaluation, settle_champion,
)
from tests.conftest import PYTHON, stage_env
from tests.tracking.test_mlflow_server import server  # noqa: F401  (a server for this module alone)

GT, OTHER_GT = "0" * 32, "f" * 32  # two test ground truths (their md5)


def tagged(version: int, ap: float | None, gt: str | None) -> SimpleNamespace:
    tags = {**({"test_segm_AP": repr(ap)} if ap is not None else {}), **({GT_TAG: gt} if gt else {})}
    return SimpleNamespace(version=str(version), tags=tags)


def test_the_choice_is_the_best_test_mask_ap_on_the_champions_ground_truth():
    v1, v2, v3, v4 = tagged(1, 0.4, GT), tagged(2, 0.5, GT), tagged(3, 0.9, OTHER_GT), tagged(4, math.nan, GT)
    assert champion_choice([v1, v2, v3, v4], v1, GT).version == "2"
    assert champion_choice([v1, v2, v3, v4], v1, OTHER_GT).version == "2"  # the champion's ground truth counts
    assert champion_choice([v1, v3], None, OTHER_GT).version == "3"  # no champion: the evaluated version's
    assert champion_choice([v1, v3], tagged(5, None, None), GT).version == "1"  # one set by hand, no record
    assert champion_choice([v4], None, GT) is None and champion_choice([v1], None, None) is None
    tie = tagged(6, 0.5, GT)
    assert champion_choice([v1, v2, tie], tie, GT).version == "6"  # a tie keeps the champion
    assert champion_choice([v1, tie, v2], v1, GT).version == "2"  # else the oldest of the tied


def test_settling_gives_up_after_a_bounded_number_of_moves():
    """A champion something keeps moving back (never the case with this code alone) costs at most SETTLE_ROUNDS
    moves, each checked, and says so."""
    versions = [tagged(1, 0.4, GT), tagged(2, 0.5, GT)]
    moves = []
    stuck = SimpleNamespace(search_model_versions=lambda _filter, page_token=None: Page(versions),
                            get_model_version_by_alias=lambda _name, _alias: versions[0],
                            set_registered_model_alias=lambda _name, _alias, version: moves.append(version))
    before, after, settled = settle_champion(stuck, GT)
    assert (before.version, after.version, settled) == ("1", "1", False) and moves == ["2"] * SETTLE_ROUNDS
    assert "the champion is still moving" in outcome("2", 0.5, GT, before, after, settled)


class Page(list):
    """One page of ``search_model_versions``: the last."""

    token = None


@pytest.fixture
def client(server):  # noqa: F811
    """A client of the module's server with no ``yolact`` yet."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server.uri)
    try:
        client.delete_registered_model(MODEL_NAME)
    except MlflowException:
        pass
    client.create_registered_model(MODEL_NAME)
    return client


def new_version(client, name: str) -> tuple[str, str]:
    """A train run and its version of ``yolact`` (a stand-in model: nothing is loaded here); (run id, version)."""
    experiment = client.get_experiment_by_name("champion") or client.get_experiment(
        client.create_experiment("champion"))
    run = client.create_run(experiment.experiment_id, run_name=name)
    version = client.create_model_version(MODEL_NAME, f"{run.info.artifact_uri}/model", run.info.run_id,
                                          await_creation_for=0)
    return run.info.run_id, version.version


def champion(client) -> str:
    return client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version


def test_a_version_measured_on_other_ground_truth_never_takes_the_champion(client):
    first, second, other, third = (new_version(client, n) for n in ("first", "second", "other", "third"))
    assert "is the new champion, was no champion" in record_evaluation(client, first[0], {"test_segm_AP": 0.4}, GT)
    message = record_evaluation(client, other[0], {"test_segm_AP": 0.9}, OTHER_GT)
    assert f"measured on other test ground truth (md5 {OTHER_GT})" in message and "champion unchanged" in message
    assert champion(client) == first[1]
    assert client.get_model_version(MODEL_NAME, other[1]).tags[GT_TAG] == OTHER_GT  # recorded all the same
    assert "does not beat" in record_evaluation(client, second[0], {"test_segm_AP": 0.3}, GT)
    assert f"is the new champion, was v{first[1]} (0.4000)" in record_evaluation(
        client, third[0], {"test_segm_AP": 0.5}, GT)
    assert champion(client) == third[1]
    assert f"v{third[1]} is the champion" in record_evaluation(client, third[0], {"test_segm_AP": 0.5}, GT)  # again
    assert "ground truth md5 `" + GT in client.get_model_version(MODEL_NAME, third[1]).description


# One clone's evaluation, as the evaluate stage ends it (Run.model_evaluated, with the clone as its repository).
# With a hold folder, its first move of the alias waits until the file "go" appears there.
CLONE = """
import sys, time
from pathlib import Path
from mlflow.tracking import MlflowClient
from pipeline.tracking.run import Run

uri, train_run, ap, gt, hold = sys.argv[1:]
move, moves = MlflowClient.set_registered_model_alias, []

def counted(self, *args):
    if hold and not moves:
        Path(hold, "waiting").touch()
        while not Path(hold, "go").exists():
            time.sleep(0.05)
    moves.append(args)
    return move(self, *args)

MlflowClient.set_registered_model_alias = counted
run = Run(MlflowClient(uri), uri, True, root=Path.cwd())
print(run.model_evaluated(train_run, {"test_segm_AP": float(ap)}, gt))
print(f"moves: {len(moves)}")
"""


def wait_for(path: Path, procs: list, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        for proc in procs:
            assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"timed out waiting for {path}"
        time.sleep(0.05)


def test_two_clones_evaluating_at_once_end_with_the_higher_version_as_champion(server, client, tmp_path):  # noqa: F811
    """Two clones (separate processes, each its own working tree and ``.mlflow-spool``) evaluate against one
    server, forced into the interleaving that loses an update: clone A (lower AP) reads the registry and is held
    just before its move of the alias (``set_registered_model_alias`` patched in its process to wait for a
    file); clone B (higher AP) then evaluates from start to end and takes the alias; only then A's move goes
    through. The former decision (read the champion, compare, move; serialised by a lock in each clone's own
    spool, so not between clones) ends with A as champion: A compared with the champion it read before B's
    move. Settling reads the registry again after each move, sees B and puts the alias back on it."""
    old = new_version(client, "old")
    record_evaluation(client, old[0], {"test_segm_AP": 0.3}, GT)
    (a_run, a_version), (b_run, b_version) = new_version(client, "a"), new_version(client, "b")
    hold = tmp_path / "hold"
    hold.mkdir()

    def clone(name: str, run_id: str, ap: float, held: Path | str) -> subprocess.Popen:
        (tmp_path / name).mkdir()
        return subprocess.Popen([PYTHON, "-c", CLONE, server.uri, run_id, str(ap), GT, str(held)],
                                cwd=tmp_path / name, env=stage_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    a = clone("a", a_run, 0.5, hold)
    try:
        wait_for(hold / "waiting", [a])  # A has read the registry and holds its move
        b = clone("b", b_run, 0.6, "")
        b_out, b_err = b.communicate(timeout=120)
        assert b.returncode == 0, b_err
        assert f"v{b_version} (segm AP 0.6000) is the new champion" in b_out and champion(client) == b_version
        (hold / "go").touch()
        a_out, a_err = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 0, a_err
    assert champion(client) == b_version
    assert "moves: 2" in a_out  # its stale move to itself, then back to B
    assert f"does not beat champion v{b_version} (0.6000); champion was v{old[1]} (0.3000)" in a_out
