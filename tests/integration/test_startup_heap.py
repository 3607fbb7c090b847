"""A serving app keeps what imports and start-up made out of the cyclic collector's reach.

That heap (torch's, sympy's, SQLAlchemy's) lives as long as the process; a full collection
walking it stalled every request in flight for 150-230 ms. It includes what torch imports on
first use (its compiler stack, on the first submission's cost estimate), and shutdown hands it
back, so an app a test stops leaves nothing pinned. A fresh interpreter, so that nothing an
earlier test imported is counted.
"""

from __future__ import annotations

import json
import subprocess
import sys

from embedmix.service.settings import Settings
from tests.integration.conftest import owner_with_keys

CHILD = """
import gc, json, sys
from fastapi.testclient import TestClient
from embedmix.api.app import create_app
from embedmix.service.settings import Settings

database_url, redis_url, work_dir, key = sys.argv[1:]
app = create_app(Settings(database_url=database_url, redis_url=redis_url, artifacts="db", work_dir=work_dir))
gc.collect()
seen = {"live_before_start": len(gc.get_objects())}  # all live: each is still there when the app starts
with TestClient(app) as client:
    seen["frozen"] = gc.get_freeze_count()
    spec = {"name": "heap", "dataset": {"name": "blobs", "size": 200}, "model": {"encoder": "mlp", "embedding_dim": 8},
            "train": {"epochs": 1}}
    seen["submitted"] = client.post("/v1/jobs", json=spec, headers={"Authorization": "Bearer " + key}).status_code
    seen["tracked_while_serving"] = len(gc.get_objects())  # what a full collection walks
seen["frozen_after_shutdown"] = gc.get_freeze_count()
print(json.dumps(seen))
"""


def test_a_serving_app_freezes_its_startup_heap_and_hands_it_back(app_settings: Settings) -> None:
    _, [(_, key)] = owner_with_keys(app_settings, 1)
    done = subprocess.run([sys.executable, "-c", CHILD, app_settings.database_url, app_settings.redis_url,
                           app_settings.work_dir, key], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["submitted"] == 201
    assert seen["frozen"] >= seen["live_before_start"]
    assert seen["tracked_while_serving"] < seen["live_before_start"] // 10
    assert seen["frozen_after_shutdown"] == 0
