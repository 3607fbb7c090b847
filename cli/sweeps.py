"""`embedmix sweep submit|status|trials|best|cancel`: hyper-parameter sweeps on a running service.

`submit` reads a sweep body (DESIGN.md: name, spec, space, metric, direction,
trials, parallel, sampler, pruner, seed) from a JSON file; `--spec` puts a
JobSpec file in as its base spec, so one spec file can be swept without being
copied into the sweep body.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from embedmix.cli.service import Key, Url, _client, _fail, _reachable, err, out
from embedmix.client import ApiError

sweep_app = typer.Typer(help="Search a spec's hyper-parameters: trials run as ordinary jobs.", no_args_is_help=True)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        err.print(f"[red]error:[/red] {path}: no such file")
        raise typer.Exit(2)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        err.print(f"[red]error:[/red] {path}: not valid JSON: {exc}")
        raise typer.Exit(2) from None


def _value(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


@sweep_app.command("submit")
def submit(
    body_path: Annotated[Path, typer.Argument(help="the sweep body (JSON)")],
    spec: Annotated[Path | None, typer.Option("--spec", help="a JobSpec file: the base spec")] = None,
    url: Url = None,
    api_key: Key = None,
) -> None:
    """Submit a sweep; prints its id."""
    body = _read_json(body_path)
    if spec is not None:
        body["spec"] = _read_json(spec)
    try:
        sweep = _client(url, api_key).submit_sweep(body)
    except ApiError as exc:
        _fail(exc)
    err.print(f"sweep {sweep['name']}: {sweep['trials']} trials, {sweep['parallel']} at a time, "
              f"{sweep['direction']} {sweep['metric']}")
    print(sweep["id"])


@sweep_app.command("status")
def status(sweep_id: str, url: Url = None, api_key: Key = None) -> None:
    """The sweep's status, trial counts and best trial."""
    try:
        sweep = _client(url, api_key).sweep(sweep_id)
    except ApiError as exc:
        _fail(exc)
    counts = ", ".join(f"{n} {state}" for state, n in sweep["trial_states"].items())
    out.print(f"{sweep['id']} {sweep['name']}: [bold]{sweep['status']}[/bold] ({counts} of {sweep['trials']})")
    best = sweep["best"]
    if best:
        out.print(f"best: trial {best['trial']} {sweep['metric']} {_value(best['value'])} "
                  f"{json.dumps(best['params'])} (job {best['job_id']})")


@sweep_app.command("trials")
def trials(sweep_id: str, url: Url = None, api_key: Key = None) -> None:
    """Every trial: its parameters, job, state, value and last intermediate value."""
    try:
        rows = _client(url, api_key).sweep_trials(sweep_id)
    except ApiError as exc:
        _fail(exc)
    table = Table(title=f"sweep {sweep_id}")
    for column in ("trial", "state", "value", "last intermediate", "params", "job"):
        table.add_column(column)
    for t in rows:
        last = t["intermediate"][-1] if t["intermediate"] else None
        seen = f"{_value(last['value'])} (epoch {last['epoch']})" if last else "–"
        table.add_row(str(t["number"]), t["state"], _value(t["value"]), seen, json.dumps(t["params"]), t["job_id"] or "–")
    out.print(table)


@sweep_app.command("best")
def best(sweep_id: str, url: Url = None, api_key: Key = None) -> None:
    """Print the best trial's resolved spec (JSON): train it again, or submit it as a job."""
    try:
        sweep = _client(url, api_key).sweep(sweep_id)
    except ApiError as exc:
        _fail(exc)
    if not sweep["best"]:
        err.print(f"[red]error:[/red] sweep {sweep_id} has no complete trial yet ({sweep['status']})")
        raise typer.Exit(1)
    err.print(f"trial {sweep['best']['trial']}: {sweep['metric']} {_value(sweep['best']['value'])}")
    print(json.dumps(sweep["best"]["spec"], indent=2))


@sweep_app.command("cancel")
def cancel(sweep_id: str, url: Url = None, api_key: Key = None) -> None:
    """Stop the sweep: no new trials, its running trial jobs are cancelled."""
    try:
        sweep = _client(url, api_key).cancel_sweep(sweep_id)
    except ApiError as exc:
        _fail(exc)
    out.print(f"{sweep['id']}: {sweep['status']}")


def register(app: typer.Typer) -> None:
    for command in sweep_app.registered_commands:
        command.callback = _reachable(command.callback)  # type: ignore[arg-type]
    app.add_typer(sweep_app, name="sweep")
