"""EmbedmixClient: one method per v1 call, errors raised as ApiError with the server's code and field."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
SUBMIT_ATTEMPTS = 3
SUBMIT_RETRY_S = 0.5  # then 1 s
WAIT_POLL_S = 1.0


class ApiError(Exception):
    """A 4xx/5xx answer; `param` names the offending field when the server says which."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        self.status, self.code, self.message, self.param = status, code, message, param
        where = f" ({param})" if param else ""
        super().__init__(f"{status} {code}: {message}{where}")


class EmbedmixClient:
    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float = 60.0):
        self.url = (url or os.environ.get("EMBEDMIX_URL") or DEFAULT_URL).rstrip("/")
        key = api_key or os.environ.get("EMBEDMIX_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> EmbedmixClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------
    @staticmethod
    def _raise_for(resp: httpx.Response) -> None:
        if resp.status_code < 400:
            return
        try:
            err = resp.json()["error"]
            raise ApiError(resp.status_code, err.get("code", "error"), err.get("message", ""), err.get("param"))
        except (ValueError, KeyError, TypeError):
            raise ApiError(resp.status_code, "http_error", resp.text[:500]) from None

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.http.request(method, path, **kwargs)
        self._raise_for(resp)
        return resp.json() if resp.content else None

    # -- jobs --------------------------------------------------------------------
    def submit(self, spec: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """Submit a job; a connection lost before the answer is retried, and makes no second job.

        Every submission carries an Idempotency-Key (a random one unless given),
        so a retry after the request may already have reached the server (a
        kept-alive connection the server closed, a reset) gets the job the
        first try made.
        """
        headers = {"Idempotency-Key": idempotency_key or f"sdk-{secrets.token_urlsafe(24)}"}
        for attempt in range(SUBMIT_ATTEMPTS - 1):
            try:
                return self._call("POST", "/v1/jobs", json=spec, headers=headers)
            except httpx.TransportError:
                time.sleep(SUBMIT_RETRY_S * 2**attempt)
        return self._call("POST", "/v1/jobs", json=spec, headers=headers)  # the last try's error is the caller's

    def jobs(self, *, status: str | None = None, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        params = {k: v for k, v in {"status": status, "limit": limit, "cursor": cursor}.items() if v is not None}
        return self._call("GET", "/v1/jobs", params=params)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/jobs/{job_id}/cancel")

    def delete_job(self, job_id: str) -> None:
        """Remove a finished job and everything it stored (frees storage quota)."""
        self._call("DELETE", f"/v1/jobs/{job_id}")

    def wait(
        self,
        job_id: str,
        *,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
        poll_s: float = WAIT_POLL_S,
    ) -> dict[str, Any]:
        """Poll the job until it has succeeded, failed or been cancelled; returns it as it ended.

        ``on_progress(job)`` is called whenever its status or step changed since the last
        poll (and once at the end). ``timeout`` (seconds) raises TimeoutError; None waits for ever.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple[str, int] | None = None
        while True:
            job = self.job(job_id)
            now = (job["status"], (job.get("progress") or {}).get("step", 0))
            if on_progress is not None and now != seen:
                on_progress(job)
            seen = now
            if job["status"] in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout} s")
            time.sleep(poll_s)

    def events(self, job_id: str, *, after: int | None = None, limit: int = 100) -> dict[str, Any]:
        params = {"limit": limit, **({"after": after} if after is not None else {})}
        return self._call("GET", f"/v1/jobs/{job_id}/events", params=params)

    def metrics(self, job_id: str, *, name: str | None = None, since_step: int | None = None) -> dict[str, Any]:
        params = {k: v for k, v in {"name": name, "since_step": since_step}.items() if v is not None}
        return self._call("GET", f"/v1/jobs/{job_id}/metrics", params=params)

    def stream(self, job_id: str) -> Iterator[tuple[str, Any]]:
        """Server-Sent Events of a job as (event, data) until the server closes the stream."""
        with self.http.stream("GET", f"/v1/jobs/{job_id}/stream", timeout=None) as resp:
            if resp.status_code >= 400:
                resp.read()
                self._raise_for(resp)
            event, data = "message", []
            for line in resp.iter_lines():
                if line == "":
                    if data:
                        text = "\n".join(data)
                        try:
                            yield event, json.loads(text)
                        except ValueError:
                            yield event, text
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())

    def checkpoints(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}/checkpoints")

    def card(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/jobs/{job_id}/model/card")

    def download(self, job_id: str, fmt: str, dest: str | Path | None = None) -> Path:
        """Stream the model to `dest` (default: the file name the server gives, in the current directory)
        and check its sha256 against the ETag before keeping it."""
        digest = hashlib.sha256()
        with self.http.stream("GET", f"/v1/jobs/{job_id}/model", params={"format": fmt}) as resp:
            if resp.status_code >= 400:
                resp.read()
                self._raise_for(resp)
            dest = Path(dest) if dest is not None else Path(_attachment_name(resp.headers, f"{job_id}-{fmt}"))
            tmp = dest.with_name(dest.name + ".part")
            etag = resp.headers.get("etag", "").strip('"')
            with open(tmp, "wb") as f:
                for chunk in resp.iter_bytes():
                    digest.update(chunk)
                    f.write(chunk)
        if etag and digest.hexdigest() != etag:
            tmp.unlink(missing_ok=True)
            raise ApiError(502, "checksum_mismatch", f"downloaded bytes have sha256 {digest.hexdigest()}, server said {etag}")
        tmp.replace(dest)
        return dest

    def embed(self, job_id: str, inputs: list[Any]) -> list[list[float]]:
        return self._call("POST", f"/v1/jobs/{job_id}/embed", json={"inputs": inputs})["embeddings"]

    def embed_array(self, job_id: str, array: Any) -> Any:
        """Embed a numpy array of samples (n x the model's input shape); returns the (n, d)
        float32 embeddings. Both ways travel as float32 bytes in base64, so neither end
        writes or parses a number. Needs numpy, which the client alone does not install."""
        import numpy as np

        batch = np.ascontiguousarray(array, dtype="<f4")
        body = {"inputs_base64": base64.b64encode(batch.tobytes()).decode("ascii"), "encoding_format": "base64"}
        out = self._call("POST", f"/v1/jobs/{job_id}/embed", json=body)
        matrix = np.frombuffer(base64.b64decode(out["embeddings"]), dtype="<f4")
        return matrix.reshape(len(batch), out["embedding_dim"]).astype(np.float32)

    # -- datasets, catalog, keys -------------------------------------------------
    def upload_dataset(self, path: str | Path, *, label_column: str | None = None) -> dict[str, Any]:
        path = Path(path)
        data = {"label_column": label_column} if label_column else {}
        with open(path, "rb") as f:
            return self._call("POST", "/v1/datasets", files={"file": (path.name, f)}, data=data, timeout=None)

    def datasets(self, *, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        return self._call("GET", "/v1/datasets", params=params)

    def delete_dataset(self, dataset_id: str) -> None:
        self._call("DELETE", f"/v1/datasets/{dataset_id}")

    def catalog(self) -> dict[str, Any]:
        return self._call("GET", "/v1/catalog")

    def create_key(self, name: str, *, admin: bool = False) -> dict[str, Any]:
        return self._call("POST", "/v1/keys", json={"name": name, "admin": admin})

    def keys(self, *, owner_id: int | None = None) -> dict[str, Any]:
        """Your keys (an admin: owner_id's), prefixes only."""
        return self._call("GET", "/v1/keys", params={"owner_id": owner_id} if owner_id is not None else {})

    def revoke_key(self, key_id: int | str) -> dict[str, Any]:
        """Revoke a key; returns it with its revoked_at."""
        return self._call("DELETE", f"/v1/keys/{key_id}")

    # -- sweeps ------------------------------------------------------------------
    def submit_sweep(self, body: dict[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """Submit a sweep (a base spec, a space, a metric...); a retry makes no second sweep, as for jobs."""
        headers = {"Idempotency-Key": idempotency_key or f"sdk-{secrets.token_urlsafe(24)}"}
        for attempt in range(SUBMIT_ATTEMPTS - 1):
            try:
                return self._call("POST", "/v1/sweeps", json=body, headers=headers)
            except httpx.TransportError:
                time.sleep(SUBMIT_RETRY_S * 2**attempt)
        return self._call("POST", "/v1/sweeps", json=body, headers=headers)

    def sweeps(self, *, status: str | None = None, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        params = {k: v for k, v in {"status": status, "limit": limit, "cursor": cursor}.items() if v is not None}
        return self._call("GET", "/v1/sweeps", params=params)

    def sweep(self, sweep_id: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/sweeps/{sweep_id}")

    def sweep_trials(self, sweep_id: str) -> list[dict[str, Any]]:
        """Every trial of the sweep, by number (following the pages)."""
        trials: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params = {"limit": 100, **({"cursor": cursor} if cursor else {})}
            page = self._call("GET", f"/v1/sweeps/{sweep_id}/trials", params=params)
            trials += page["data"]
            if not page["has_more"]:
                return trials
            cursor = page["next_cursor"]

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        return self._call("POST", f"/v1/sweeps/{sweep_id}/cancel")


def _attachment_name(headers: httpx.Headers, fallback: str) -> str:
    """The file name of a Content-Disposition attachment, as a bare name (never a path), else ``fallback``."""
    match = re.search(r'filename="([^"]+)"', headers.get("content-disposition", ""))
    name = Path(match.group(1)).name if match else ""
    return name if name and name not in {".", ".."} else fallback
