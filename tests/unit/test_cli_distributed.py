"""`embedmix train` of a 2-device spec: two real ranks, one set of outputs, the one-device result; SIGTERM or kill -9
of the CLI stops every rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import free_port

SPEC = {
    "name": "two-ranks", "dataset": {"name": "mnist1d", "size": 400},
    "model": {"encoder": "mlp", "embedding_dim": 16, "width": 32},
    "objective": {"loss": "multi_similarity"},
    "mixup": {"method": "metrix", "alpha": 1.0, "weight": 0.5},
    "train": {"epochs": 2, "batch_size": 64, "optimizer": "sgd", "lr": 0.05, "seed": 1, "samples_per_class": 4},
    "eval": {"metrics": ["precision_at_1"]},
    "export": {"formats": ["safetensors"]},
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train(tmp: Path, name: str, devices: int, **train) -> subprocess.Popen:
    """The CLI in a child; its output goes to a file (a pipe nobody reads would fill and stall a long run)."""
    spec = {**SPEC, "resources": {"devices": devices}, "train": {**SPEC["train"], **train}}
    (tmp / f"{name}.json").write_text(json.dumps(spec))
    with (tmp / f"{name}.log").open("w") as log:
        return subprocess.Popen([sys.executable, "-m", "embedmix.cli.main", "train", str(tmp / f"{name}.json"), "--out", str(tmp / name)],
                                env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True)


def _metrics(out: Path) -> list[tuple[str, int, float]]:
    return [(m["name"], m["step"], m["value"]) for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def _processes_naming(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def test_two_ranks_export_once_and_match_one_device(tmp_path):
    two, one = _train(tmp_path, "two", 2), _train(tmp_path, "one", 1)
    for name, proc in (("two", two), ("one", one)):
        assert proc.wait(timeout=600) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    cards = {n: json.loads((tmp_path / n / "card.json").read_text()) for n in ("one", "two")}
    assert cards["two"]["training"]["world_size"] == 2 and cards["one"]["training"]["world_size"] == 1
    assert (tmp_path / "two" / "checkpoint.pt").is_file()
    ranked, single = _metrics(tmp_path / "two"), _metrics(tmp_path / "one")
    assert [m[:2] for m in ranked] == [m[:2] for m in single]  # written once per step, by rank 0 alone
    assert [m[2] for m in ranked] == pytest.approx([m[2] for m in single], abs=1e-5, rel=0)
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=0)

# A one-rank group, joined as a rank the launcher started: the environment torch.distributed.run gives each rank.
RANK_CHILD = """
import atexit, sys
from embedmix.cli.main import main
atexit.register(lambda: print("teardown ran", flush=True))
sys.argv = ["embedmix", "train", sys.argv[1], "--out", sys.argv[2]]
main()
"""


def test_a_launched_rank_leaves_without_the_interpreter_teardown(tmp_path):
    """The gloo group's teardown at interpreter exit can abort a finished rank (SIGABRT), so a rank that has
    exported leaves with exit_rank: its files written, exit code 0, and no atexit handler run."""
    (tmp_path / "spec.json").write_text(json.dumps({**SPEC, "train": {**SPEC["train"], "epochs": 1}}))
    env = {**ENV, "TORCHELASTIC_RUN_ID": "test", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    done = subprocess.run([sys.executable, "-c", RANK_CHILD, str(tmp_path / "spec.json"), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (tmp_path / "out" / "model.safetensors").is_file() and "card:" in done.stdout
    assert "teardown ran" not in done.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_stopping_the_cli_stops_every_rank(tmp_path, signum):
    """SIGTERM stops the launcher's session; kill -9 runs no handler, so the parent-death signals must do it."""
    proc = _train(tmp_path, "long", 2, epochs=10_000)
    try:
        metrics = tmp_path / "long" / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while not (metrics.is_file() and metrics.stat().st_size) and proc.poll() is None:
            assert time.monotonic() < deadline, (tmp_path / "long.log").read_text()[-3000:]
            time.sleep(0.5)
        assert len(_processes_naming(str(tmp_path / "long"))) >= 3  # the CLI, the launcher's ranks
        proc.send_signal(signum)
        assert proc.wait(timeout=120) != 0
        deadline = time.monotonic() + 30
        while _processes_naming(str(tmp_path / "long")) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _processes_naming(str(tmp_path / "long")) == []
    finally:  # a failed check must not leave a 10,000-epoch run on the machine
        for pid in _processes_naming(str(tmp_path / "long")):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
