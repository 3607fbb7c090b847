"""The `embedmix` command line: train locally, and inspect the spec schema and catalog."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:  # the CLI imports torch only in the commands that train
    from embedmix.core.data import Dataset, TextPairs
    from embedmix.core.loop import TrainResult

app = typer.Typer(help="embedmix: train embedding models with mixup and contrastive methods, locally or as a service.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def _load(spec_path: Path):
    from embedmix.core.errors import SpecError
    from embedmix.core.spec import load_spec_file

    if not spec_path.is_file():
        _fail(f"{spec_path}: no such file")
    try:
        return load_spec_file(spec_path)
    except SpecError as exc:
        for err in exc.errors:
            console.print(f"[red]invalid[/red] {err['field']}: {err['message']}")
        raise typer.Exit(2) from None


@app.command()
def schema() -> None:
    """Print the JobSpec JSON schema."""
    from embedmix.core.spec import JobSpec

    print(json.dumps(JobSpec.model_json_schema(), indent=2))


@app.command("catalog")
def show_catalog(as_json: bool = typer.Option(False, "--json", help="print the catalog as JSON")) -> None:
    """List every dataset, encoder, loss, mixing method and metric with its parameters."""
    from embedmix.core.catalog import SECTIONS, catalog_json

    if as_json:
        print(json.dumps(catalog_json(), indent=2))
        return
    out = Console()
    for section, entries in SECTIONS.items():
        table = Table(title=section, show_lines=False)
        for col in ("name", "parameters (default)", "needs", "summary"):
            table.add_column(col, overflow="fold")
        for e in entries.values():
            params = ", ".join(f"{p.name}={p.default}" for p in e.common + e.params)
            needs = f"labels={e.labels}" + (f", views={e.views}" if e.views > 1 else "")
            table.add_row(e.name, params, needs, e.summary)
        out.print(table)


@app.command()
def validate(spec_path: Path) -> None:
    """Validate a spec file; print the resolved spec (every default filled in): what a job stores and runs.

    Metrics that depend on a local file's task are filled once `train` reads the file."""
    spec = _load(spec_path)
    print(json.dumps(spec.model_dump(mode="json"), indent=2))


class _CliCallbacks:
    """Writes metrics.jsonl and the latest checkpoint into the output directory, drives the progress bar."""

    def __init__(self, out: Path, bar: Progress, task_id: Any):
        self.out, self.bar, self.task_id = out, bar, task_id
        self.metrics = open(out / "metrics.jsonl", "a", buffering=1)
        self.last_eval: dict[str, float] = {}

    def on_progress(self, p) -> None:
        eta = "-" if math.isinf(p.eta_s) else f"{p.eta_s:.0f}s"
        self.bar.update(self.task_id, completed=p.step, total=p.total_steps,
                        info=f"epoch {p.epoch}/{p.epochs} step {p.step}/{p.total_steps} loss {p.loss:.4f} ETA {eta}")

    def on_metrics(self, step: int, epoch: int, values: dict[str, float]) -> None:
        now = time.time()
        for name, value in values.items():
            self.metrics.write(json.dumps({"name": name, "step": step, "epoch": epoch, "value": value, "time": now}) + "\n")
            if name.startswith("eval/"):
                self.last_eval[name] = value

    def on_checkpoint(self, state: bytes, step: int, epoch: int) -> None:
        tmp = self.out / "checkpoint.pt.tmp"
        tmp.write_bytes(state)
        os.replace(tmp, self.out / "checkpoint.pt")

    def should_stop(self) -> bool:
        return False


def _init_weights(spec) -> dict[str, Any] | None:
    """The exported encoder file `model.init_from.path` names, read as the state dict the run starts from."""
    from embedmix.core.errors import SpecError
    from embedmix.core.export import read_encoder_weights

    source = spec.model.init_from
    if source is None:
        return None
    path = Path(source.path)
    if not path.is_file():
        _fail(f"model.init_from.path: {path}: no such file")
    try:
        return read_encoder_weights(path)
    except SpecError as exc:
        _fail(str(exc))


@app.command()
def train(
    spec_path: Path = typer.Argument(..., help="job spec (JSON)"),
    out: Path = typer.Option(Path("runs/latest"), "--out", help="output directory"),
    resume: bool = typer.Option(False, "--resume", help="continue from OUT/checkpoint.pt"),
    device: Optional[str] = typer.Option(None, help="cpu or cuda; default: the spec's train.device"),
) -> None:
    """Train a spec locally and export the model into OUT; resources.devices > 1 runs that many ranks together."""
    import torch

    from embedmix.core.data import load_dataset
    from embedmix.core.errors import DataError, Diverged, SpecError, UnsupportedSpec
    from embedmix.core.launch import exit_rank, in_launched_rank, join_group, launched_rank, leave_group, rank_command, run_ranks
    from embedmix.core.train import pick_device, train as run_training

    spec = _load(spec_path)
    if spec.model.init_from is not None and spec.model.init_from.job is not None:
        _fail("model.init_from.job names a job in the service (submit the spec there); locally, start from an "
              "exported encoder file with model.init_from.path (`embedmix download JOB_ID --format safetensors` fetches one)")
    if spec.resources.devices > 1 and not in_launched_rank():
        args = ["train", str(spec_path), "--out", str(out), *(["--resume"] if resume else []),
                *(["--device", device] if device else [])]
        raise typer.Exit(run_ranks(rank_command(spec.resources.devices, "embedmix.cli.main", args)))
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    if resume and not ckpt.is_file():
        _fail(f"--resume: {ckpt} does not exist")
    if not resume and launched_rank() == 0:  # rank 0 writes the outputs; another rank's unlink would lose its lines
        (out / "metrics.jsonl").unlink(missing_ok=True)
    try:
        data = load_dataset(spec)
    except SpecError as exc:
        _fail("; ".join(f"{e['field']}: {e['message']}" for e in exc.errors))
    except DataError as exc:
        _fail(str(exc))
    init_weights = None if resume else _init_weights(spec)  # a checkpoint already holds the weights
    summary = data.describe()  # arrays or text pairs alike
    console.print(f"data: {summary['source']} train {summary['train_rows']} test {summary['test_rows']} "
                  f"input {summary['input_shape']}")
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task_id = bar.add_task(spec.name, total=None, info="starting")
        callbacks = _CliCallbacks(out, bar, task_id)
        try:
            ranks = join_group(torch.device(device) if device else pick_device(spec))
            result = run_training(spec, data, callbacks, resume=ckpt.read_bytes() if resume else None,
                                  init_weights=init_weights, device=torch.device(device) if device else None)
        except (UnsupportedSpec, Diverged, SpecError) as exc:
            _fail(str(exc))
        finally:
            leave_group()
    if ranks.rank == 0:  # rank 0 exports for the group
        _export_and_report(result, data, out)
    if in_launched_rank():
        exit_rank()  # the gloo group's teardown at interpreter exit can abort a finished rank


def _export_and_report(result: TrainResult, data: Dataset | TextPairs, out: Path) -> None:
    """Write the model's exports and card into OUT and print its test metrics and files."""
    from embedmix.core.export import export

    card = export(result, data, out, training={"steps": result.step, "epochs": result.epoch,
                                               "seconds": round(result.seconds, 2)})
    table = Table(title=f"{result.spec.name}: test metrics")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, f"{value:.4f}")
    Console().print(table)
    for fmt, info in card["files"].items():
        print(f"{fmt}: {out / info['file']}")
    print(f"card: {out / 'card.json'}")


def _register_service_commands() -> None:
    from embedmix.cli import server, service, sweeps

    service.register(app)
    server.register(app)
    sweeps.register(app)


_register_service_commands()


def _register_recipe_commands() -> None:
    from embedmix.cli import recipes, sweep_recipe, temperature  # noqa: F401  (the studies register themselves)

    recipes.register(app)


_register_recipe_commands()


def main() -> None:
    app(prog_name="embedmix")


if __name__ == "__main__":
    sys.exit(main())
