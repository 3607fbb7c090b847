"""`embedmix keys list` and `keys revoke` against a real server: the list shows the caller's keys,
revoke confirms what it revoked, and the API's GET /v1/keys keeps owners apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

from embedmix.api import create_app
from embedmix.service.settings import Settings
from embedmix.store import create_api_key, create_owner, make_engine, make_session_factory
from embedmix.store.db import migrate
from tests.conftest import RedisServer, served_in_thread

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "embedmix.cli.main", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})


def test_keys_list_and_revoke_confirm_and_keep_owners_apart(tmp_path: Path, redis_server: RedisServer) -> None:
    database_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(database_url)
    with make_session_factory(make_engine(database_url))() as session:
        alice, bob = create_owner(session, "alice"), create_owner(session, "bob")
        (first, alice_key), (second, _) = create_api_key(session, alice.id), create_api_key(session, alice.id)
        _, bob_key = create_api_key(session, bob.id)
        admin = create_owner(session, "root", is_admin=True)
        _, admin_key = create_api_key(session, admin.id)
        session.commit()
        alice_id, first_prefix, second_id = alice.id, first.prefix, second.id
    settings = Settings(database_url=database_url, redis_url=redis_server.url, work_dir=str(tmp_path))
    with served_in_thread(create_app(settings)) as port:
        url = f"http://127.0.0.1:{port}"
        listed = _cli("keys", "list", "--url", url, "--api-key", alice_key)
        assert listed.returncode == 0 and first_prefix in listed.stdout, listed.stderr
        revoked = _cli("keys", "revoke", str(second_id), "--url", url, "--api-key", alice_key)
        assert revoked.returncode == 0, revoked.stderr
        assert revoked.stdout.startswith(f"revoked key {second_id} (") and f"of owner {alice_id}" in revoked.stdout

        def keys(key: str, **params: int) -> httpx.Response:
            return httpx.get(f"{url}/v1/keys", params=params, headers={"Authorization": f"Bearer {key}"})

        mine = keys(alice_key).json()["data"]
        assert [k["revoked_at"] is not None for k in mine] == [False, True]
        assert keys(bob_key, owner_id=alice_id).status_code == 404  # another owner's keys do not exist for bob
        assert len(keys(admin_key, owner_id=alice_id).json()["data"]) == 2
