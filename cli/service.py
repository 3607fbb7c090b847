"""CLI commands that talk to a running embedmix service over HTTP (through `client`)."""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, ParamSpec, TypeVar

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from embedmix.client import ApiError, EmbedmixClient
from embedmix.client.http import DEFAULT_URL, TERMINAL

P = ParamSpec("P")
R = TypeVar("R")
out = Console()
err = Console(stderr=True)

Url = Annotated[Optional[str], typer.Option("--url", envvar="EMBEDMIX_URL", help="service URL")]
Key = Annotated[Optional[str], typer.Option("--api-key", envvar="EMBEDMIX_API_KEY", help="API key", show_default=False)]

datasets_app = typer.Typer(help="Upload, list and delete datasets.", no_args_is_help=True)
keys_app = typer.Typer(help="Create and revoke API keys (needs an admin key).", no_args_is_help=True)


def _client(url: str | None, key: str | None) -> EmbedmixClient:
    return EmbedmixClient(url, key)


def _fail(exc: ApiError) -> None:
    err.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(1)


def _reachable(command: Callable[P, R]) -> Callable[P, R]:
    """The command, with a service it cannot reach reported in one line (and exit code 1), not a traceback."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except httpx.TransportError as exc:
            url = kwargs.get("url") or os.environ.get("EMBEDMIX_URL") or DEFAULT_URL
            reason = str(exc) or type(exc).__name__
            err.print(f"[red]error:[/red] cannot reach the embedmix service at {url} ({reason}); "
                      "is it running? (--url or EMBEDMIX_URL)", soft_wrap=True)
            raise typer.Exit(1) from None

    return run


def _metrics_table(title: str, metrics: dict[str, Any]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in (metrics or {}).items():
        table.add_row(name, f"{value:.4f}" if isinstance(value, (int, float)) else str(value))
    return table


def _follow(client: EmbedmixClient, job_id: str) -> dict[str, Any]:
    """A live progress bar from the job's event stream; returns the final job."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=err) as bar:
        task = bar.add_task(job_id, total=None, info="queued")
        start, loss = time.monotonic(), None
        for event, data in client.stream(job_id):
            if not isinstance(data, dict):
                continue
            if event == "metrics" and "train/loss" in str(data):
                loss = _latest(data, "train/loss") or loss
            if event == "progress" and data.get("total_steps"):
                step, total = data.get("step", 0), data["total_steps"]
                elapsed = time.monotonic() - start
                eta = elapsed / step * (total - step) if step else float("nan")
                info = f"epoch {data.get('epoch', 0)} step {step}/{total}" + (f" loss {loss:.4f}" if loss is not None else "") + f" ETA {eta:.0f}s"
                bar.update(task, completed=step, total=total, info=info)
            if event == "status":
                bar.update(task, info=str(data.get("status", data)))
                if data.get("status") in TERMINAL:
                    break
    return client.job(job_id)


def _latest(data: dict[str, Any], name: str) -> float | None:
    """Pull the newest value of a series out of a `metrics` SSE payload, whatever its shape."""
    if name in data and isinstance(data[name], (int, float)):
        return float(data[name])
    rows = data.get("points") or data.get("data") or []
    values = [r["value"] for r in rows if isinstance(r, dict) and r.get("name") == name]
    return float(values[-1]) if values else None


def submit(spec_path: Path, wait: bool = typer.Option(False, "--wait", help="follow progress, then print the metrics"),
           idempotency_key: Optional[str] = typer.Option(None, "--idempotency-key"), url: Url = None, api_key: Key = None) -> None:
    """Submit a job spec; with --wait, follow it to the end."""
    spec = json.loads(spec_path.read_text())
    with _client(url, api_key) as client:
        try:
            job = client.submit(spec, idempotency_key=idempotency_key)
            print(job["id"])
            if not wait:
                return
            job = _follow(client, job["id"])
        except ApiError as exc:
            _fail(exc)
    out.print(f"{job['id']}: {job['status']}")
    if job.get("error"):
        err.print(f"[red]{job['error'].get('code')}[/red]: {job['error'].get('message')}")
    if job["status"] == "succeeded":
        out.print(_metrics_table(f"{job['name']}: test metrics", job.get("metrics") or {}))
    if job["status"] != "succeeded":
        raise typer.Exit(1)


def jobs(status: Optional[str] = None, limit: int = 20, url: Url = None, api_key: Key = None) -> None:
    """List your jobs, newest first."""
    with _client(url, api_key) as client:
        try:
            page = client.jobs(status=status, limit=limit)
        except ApiError as exc:
            _fail(exc)
    table = Table()
    for col in ("id", "name", "status", "progress", "created"):
        table.add_column(col, no_wrap=col == "id")
    for j in page["data"]:
        p = j.get("progress") or {}
        table.add_row(j["id"], j["name"], j["status"], f"{100 * (p.get('fraction') or 0):.0f}%", str(j.get("created_at", ""))[:19])
    out.print(table)


def status(job_id: str, url: Url = None, api_key: Key = None) -> None:
    """Show one job as JSON."""
    with _client(url, api_key) as client:
        try:
            print(json.dumps(client.job(job_id), indent=2))
        except ApiError as exc:
            _fail(exc)


def logs(job_id: str, follow: bool = typer.Option(False, "--follow", "-f"), url: Url = None, api_key: Key = None) -> None:
    """Print the job's events; with --follow, keep printing until it ends."""
    with _client(url, api_key) as client:
        after = None
        try:
            while True:
                page = client.events(job_id, after=after)
                for e in page["data"]:
                    print(f"{e['time']} {e['level']:<7} {e['type']:<8} {e['message']}")
                    after = e["id"]
                if not follow or (not page["data"] and client.job(job_id)["status"] in TERMINAL):
                    break
                if not page["data"]:
                    time.sleep(1.0)
        except ApiError as exc:
            _fail(exc)


def metrics(job_id: str, name: Optional[str] = None, url: Url = None, api_key: Key = None) -> None:
    """Print a job's metric series."""
    with _client(url, api_key) as client:
        try:
            page = client.metrics(job_id, name=name)
        except ApiError as exc:
            _fail(exc)
    table = Table()
    for col in ("name", "step", "epoch", "value"):
        table.add_column(col)
    for m in page["data"]:
        table.add_row(m["name"], str(m["step"]), str(m.get("epoch", "")), f"{m['value']:.5f}")
    out.print(table)


def cancel(job_id: str, url: Url = None, api_key: Key = None) -> None:
    """Cancel a queued or running job."""
    with _client(url, api_key) as client:
        try:
            print(client.cancel(job_id)["status"])
        except ApiError as exc:
            _fail(exc)


def download(job_id: str, fmt: str = typer.Option("onnx", "--format", help="an export format, e.g. safetensors, onnx, onnx_int8"),
             dest: Optional[Path] = typer.Option(None, "--out", help="file to write (default: the server's file name)"),
             url: Url = None, api_key: Key = None) -> None:
    """Download the trained model (the sha256 is checked against the server's ETag)."""
    with _client(url, api_key) as client:
        try:
            print(client.download(job_id, fmt, dest))
        except ApiError as exc:
            _fail(exc)


def embed(job_id: str, inputs: Path = typer.Argument(..., help=".npy or .json file with one input per row (a text model: a JSON list of strings)"),
          url: Url = None, api_key: Key = None) -> None:
    """Embed inputs with a job's model; prints the embeddings as JSON."""
    with _client(url, api_key) as client:
        try:
            if inputs.suffix == ".npy":  # sent as float32 bytes, not as JSON numbers
                import numpy as np

                embeddings = client.embed_array(job_id, np.load(inputs, allow_pickle=False)).tolist()
            else:
                embeddings = client.embed(job_id, json.loads(inputs.read_text()))
            print(json.dumps(embeddings))
        except ApiError as exc:
            _fail(exc)


@datasets_app.command("upload")
@_reachable
def datasets_upload(path: Path, label_column: Optional[str] = typer.Option(None, "--label-column"),
                    url: Url = None, api_key: Key = None) -> None:
    """Upload an .npz, .csv or .parquet file, or .jsonl text pairs; prints the dataset id."""
    with _client(url, api_key) as client:
        try:
            ds = client.upload_dataset(path, label_column=label_column)
        except ApiError as exc:
            _fail(exc)
    print(ds["id"])


@datasets_app.command("list")
@_reachable
def datasets_list(url: Url = None, api_key: Key = None) -> None:
    with _client(url, api_key) as client:
        try:
            page = client.datasets(limit=100)
        except ApiError as exc:
            _fail(exc)
    table = Table()
    for col in ("id", "filename", "rows", "bytes", "created"):
        table.add_column(col, no_wrap=col == "id")
    for d in page["data"]:
        table.add_row(d["id"], d["filename"], str(d.get("rows")), str(d.get("bytes")), str(d.get("created_at", ""))[:19])
    out.print(table)


@datasets_app.command("delete")
@_reachable
def datasets_delete(dataset_id: str, url: Url = None, api_key: Key = None) -> None:
    with _client(url, api_key) as client:
        try:
            client.delete_dataset(dataset_id)
        except ApiError as exc:
            _fail(exc)


@keys_app.command("create")
@_reachable
def keys_create(name: str, admin: bool = typer.Option(False, "--admin"), url: Url = None, api_key: Key = None) -> None:
    """Create an owner and an API key for it; the key is printed once."""
    with _client(url, api_key) as client:
        try:
            print(json.dumps(client.create_key(name, admin=admin), indent=2))
        except ApiError as exc:
            _fail(exc)


@keys_app.command("list")
@_reachable
def keys_list(owner_id: Optional[int] = typer.Option(None, "--owner-id", help="another owner's keys (needs an admin key)"),
              url: Url = None, api_key: Key = None) -> None:
    """Your API keys (prefixes only), revoked ones too."""
    with _client(url, api_key) as client:
        try:
            page = client.keys(owner_id=owner_id)
        except ApiError as exc:
            _fail(exc)
    table = Table()
    for col in ("id", "owner", "prefix", "created", "revoked"):
        table.add_column(col)
    for k in page["data"]:
        table.add_row(str(k["id"]), str(k["owner_id"]), k["prefix"], str(k["created_at"])[:19], str(k["revoked_at"] or "")[:19])
    out.print(table)


@keys_app.command("revoke")
@_reachable
def keys_revoke(key_id: str, url: Url = None, api_key: Key = None) -> None:
    """Revoke a key at once; it gets 401 from then on."""
    with _client(url, api_key) as client:
        try:
            key = client.revoke_key(key_id)
        except ApiError as exc:
            _fail(exc)
    print(f"revoked key {key['id']} ({key['prefix']}...) of owner {key['owner_id']} at {key['revoked_at']}")


def register(app: typer.Typer) -> None:
    for fn in (submit, jobs, status, logs, metrics, cancel, download, embed):
        app.command()(_reachable(fn))
    app.add_typer(datasets_app, name="datasets")
    app.add_typer(keys_app, name="keys")
