"""The `embedmix` command line, run as a user runs it: a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from embedmix.cli import supervise
from embedmix.cli.supervise import (
    RUN_MARKER,
    Child,
    Supervisor,
    UpError,
    clear_stale_run,
    lock_data_dir,
)
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
EMBEDMIX = [sys.executable, "-m", "embedmix.cli.main"]


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*EMBEDMIX, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def write_spec(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


SMALL = {
    "name": "cli-small",
    "dataset": {"name": "mnist1d", "size": 400},
    "model": {"encoder": "conv1d", "embedding_dim": 16, "width": 16},
    "objective": {"loss": "multi_similarity"},
    "train": {"epochs": 2, "batch_size": 64},
    "eval": {"metrics": ["precision_at_1", "map_at_r"]},
    "export": {"formats": ["safetensors", "onnx", "torchscript"]},
}


def test_schema_and_catalog_print_json():
    schema = json.loads(run("schema").stdout)
    assert "dataset" in schema["properties"]
    catalog = json.loads(run("catalog", "--json").stdout)
    assert {e["name"] for e in catalog["losses"]} >= {"supcon", "multi_similarity", "ntxent"}
    assert "metrix" in run("catalog").stdout


def test_validate_names_the_bad_field(tmp_path):
    bad = {**SMALL, "train": {"epochs": 0}, "objective": {"loss": "nope"}}
    proc = run("validate", str(write_spec(tmp_path, bad)))
    assert proc.returncode == 2
    assert "train.epochs" in proc.stderr
    good = run("validate", str(write_spec(tmp_path, SMALL)))
    assert good.returncode == 0 and json.loads(good.stdout)["train"]["lr"] == 0.001


def test_invalid_mixing_combination_is_refused_before_training(tmp_path):
    spec = {**SMALL, "objective": {"loss": "supcon"}, "mixup": {"method": "metrix", "alpha": 2.0}}
    proc = run("train", str(write_spec(tmp_path, spec)), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "mixup.method" in proc.stderr and "'supcon'" in proc.stderr
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


def test_design_example_with_metrix_validates():
    proc = run("validate", str(ROOT / "examples/mnist1d-ms-metrix.json"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["mixup"]["method"] == "metrix"


def test_train_writes_model_card_metrics_and_resumes(tmp_path):
    out = tmp_path / "out"
    proc = run("train", str(write_spec(tmp_path, SMALL)), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    for name in ("model.safetensors", "model.onnx", "model.torchscript.pt", "card.json", "metrics.jsonl", "checkpoint.pt"):
        assert (out / name).is_file(), name
    card = json.loads((out / "card.json").read_text())
    assert set(card["metrics"]) == {"precision_at_1", "map_at_r"}
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "eval/precision_at_1"} <= {line["name"] for line in lines}
    assert "precision_at_1" in proc.stdout and str(out / "model.onnx") in proc.stdout
    again = run("train", str(write_spec(tmp_path, SMALL)), "--out", str(out), "--resume")
    assert again.returncode == 0, again.stderr  # already finished: resumes at the last step and re-exports


def test_bad_data_file_fails_before_training(tmp_path):
    import numpy as np

    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    x[3, 2] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(50) % 5)
    spec = {**SMALL, "dataset": {"path": str(tmp_path / "d.npz")}, "model": {"encoder": "mlp"}}
    proc = run("train", str(write_spec(tmp_path, spec)), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert "NaN" in proc.stderr


@pytest.mark.slow
def test_quality_mnist1d_conv1d_supcon(tmp_path):
    """The engine's quality bar: supcon + conv1d on MNIST-1D, random 80/20 split, within 30 epochs."""
    spec = json.loads((ROOT / "examples/mnist1d-supcon.json").read_text())
    assert spec["train"]["epochs"] <= 30
    proc = run("train", str(ROOT / "examples/mnist1d-supcon.json"), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "card.json").read_text())["metrics"]
    assert metrics["precision_at_1"] >= 0.93
    assert metrics["map_at_r"] >= 0.80


# -- `embedmix up`'s process tree (cli/supervise.py), with real processes ----------------------------

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_child_dies_with_its_parent_even_by_sigkill():
    """A parent starts a Child and is then killed -9: the kernel's parent-death signal takes the child."""
    parent_code = (
        "from embedmix.cli.supervise import Child; "
        f"c = Child('sleeper', {SLEEPER!r}, {{}}); c.start(); print(c.process.pid, flush=True); "
        "import time; time.sleep(600)"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert not _gone(child)
    parent.kill()
    parent.wait()
    wait_for(lambda: _gone(child), 30, f"child {child} to die with its parent")


def test_a_stale_run_is_cleared_and_a_live_one_refused(tmp_path):
    """What carries the data dir's run marker is stopped; a second lock on the data dir is an UpError."""
    orphan = subprocess.Popen(SLEEPER, env={**os.environ, RUN_MARKER: str(tmp_path)})
    bystander = subprocess.Popen(SLEEPER, env={**os.environ, RUN_MARKER: str(tmp_path / "other")})
    stale_socket = tmp_path / "redis.sock"
    stale_socket.write_text("")
    try:
        lock = lock_data_dir(tmp_path)
        with pytest.raises(UpError, match="already running"):
            lock_data_dir(tmp_path)
        stopped = clear_stale_run(tmp_path, [stale_socket])
        assert [line.split()[1] for line in stopped] == [str(orphan.pid)]
        assert _gone(orphan.pid)
        assert bystander.poll() is None and not stale_socket.exists()
        lock.close()
        lock_data_dir(tmp_path).close()  # free again once the holder lets go
    finally:
        for process in (orphan, bystander):
            process.kill()
            process.wait()


def test_a_child_that_keeps_crashing_is_restarted_up_to_the_cap(monkeypatch):
    """Each exit is a logged restart; the one past MAX_RESTARTS within the window stops `up` (no backoff here)."""
    monkeypatch.setattr(supervise, "MAX_BACKOFF_S", 0.0)
    said: list[str] = []
    supervisor = Supervisor([], on_change=lambda: None, say=said.append)
    supervisor.start(Child("crasher", [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ)))
    with pytest.raises(UpError, match=f"the crasher exited with code 3 after {supervise.MAX_RESTARTS} restarts"):
        wait_for(supervisor.poll, 120, "the restart cap")
    assert len(said) == supervise.MAX_RESTARTS
    assert "exited with code 3; restarting it in 0 s (restart 1 of at most" in said[0]
