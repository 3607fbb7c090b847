"""The store against real databases: every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    event,
    func,
    inspect,
    select,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from embedmix.store import (
    ActiveJobLimit,
    ArtifactNotFound,
    ArtifactStore,
    DatabaseArtifacts,
    FilesystemArtifacts,
    IdempotencyConflict,
    InvalidCursor,
    MetricPoint,
    NewEvent,
    add_checkpoint,
    add_events,
    artifact_store_from_url,
    authenticate,
    claim_lease,
    count_active_jobs,
    create_api_key,
    create_dataset,
    create_job,
    create_owner,
    delete_dataset,
    expired_leases,
    get_dataset,
    get_job,
    latest_checkpoint,
    latest_metrics,
    list_checkpoints,
    list_datasets,
    list_events,
    list_jobs,
    list_metrics,
    make_engine,
    reap_expired,
    release_lease,
    renew_lease,
    request_cancel,
    revoke_api_key,
    transition,
    update_progress,
    upsert_metrics,
)
from embedmix.store.artifacts import S3Artifacts
from embedmix.store.db import alembic_config, migrate
from embedmix.store.models import ApiKey, Artifact, ArtifactChunk, Base, Job, Metric

SPEC: dict[str, Any] = {"name": "t", "dataset": {"name": "mnist1d"}, "train": {"epochs": 1}}
MB = 1_000_000


def _owner(session: Session, name: str = "alice") -> int:
    owner = create_owner(session, name)
    session.commit()
    return owner.id


def _job(session: Session, owner_id: int, **kwargs: Any) -> str:
    job, _ = create_job(session, owner_id, SPEC, name="t", **kwargs)
    session.commit()
    return job.id


def _schema_diff(url: str, metadata: MetaData) -> list[Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, metadata)
    finally:
        engine.dispose()


# --- migrations -------------------------------------------------------------


def test_migrations_build_the_models_schema_from_empty(empty_database_url: str) -> None:
    migrate(empty_database_url)
    assert _schema_diff(empty_database_url, Base.metadata) == []

    drifted = MetaData()
    for table in Base.metadata.sorted_tables:
        table.to_metadata(drifted)
    drifted.tables["jobs"].append_column(Column("priority", Integer))
    assert _schema_diff(empty_database_url, drifted), "the comparison must notice a missing column"

    config = alembic_config(empty_database_url)
    command.downgrade(config, "base")
    engine = make_engine(empty_database_url)
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    engine.dispose()
    migrate(empty_database_url)
    assert _schema_diff(empty_database_url, Base.metadata) == []


# --- jobs: idempotency, scoping, paging -------------------------------------


def test_idempotency_key_returns_the_same_job_or_conflicts(session: Session) -> None:
    owner = _owner(session)
    first, created = create_job(
        session, owner, SPEC, name="a", idempotency_key="k1", request_hash="h1"
    )
    again, created_again = create_job(
        session, owner, SPEC, name="a", idempotency_key="k1", request_hash="h1"
    )
    assert created and not created_again and again.id == first.id
    with pytest.raises(IdempotencyConflict) as conflict:
        create_job(session, owner, SPEC, name="a", idempotency_key="k1", request_hash="h2")
    assert conflict.value.job_id == first.id

    other_owner = _owner(session, "bob")
    theirs, created_theirs = create_job(
        session, other_owner, SPEC, name="a", idempotency_key="k1", request_hash="h2"
    )
    assert created_theirs and theirs.id != first.id, "keys are per owner"
    no_key_1, _ = create_job(session, owner, SPEC, name="a")
    no_key_2, _ = create_job(session, owner, SPEC, name="a")
    assert no_key_1.id != no_key_2.id
    session.commit()
    assert len(list_jobs(session, owner)[0]) == 3


def test_owner_b_cannot_see_or_touch_owner_a_jobs_and_datasets(session: Session) -> None:
    alice, bob = _owner(session, "alice"), _owner(session, "bob")
    job_id = _job(session, alice)
    artifact = DatabaseArtifacts().put(session, [b"x,y\n1,2\n"])
    dataset = create_dataset(
        session, alice, filename="d.csv", format="csv", rows=1, info={}, artifact=artifact
    )
    session.commit()

    assert get_job(session, bob, job_id) is None
    assert list_jobs(session, bob) == ([], None)
    assert request_cancel(session, bob, job_id) is None
    assert get_dataset(session, bob, dataset.id) is None
    assert list_datasets(session, bob) == ([], None)
    assert not delete_dataset(session, bob, dataset.id, DatabaseArtifacts())
    session.commit()

    job = get_job(session, alice, job_id)
    assert job is not None and job.status == "queued"
    assert get_dataset(session, alice, dataset.id) is not None


def test_cursor_paging_returns_every_job_once_newest_first(session: Session) -> None:
    owner = _owner(session)
    ids = [_job(session, owner) for _ in range(25)]
    # Ten jobs share one timestamp: the id must break the tie.
    tied = datetime(2030, 1, 1, tzinfo=UTC)
    session.execute(update(Job).where(Job.id.in_(ids[5:15])).values(created_at=tied))
    session.commit()
    expected = [job.id for job in session.scalars(select(Job))]
    expected.sort(key=lambda i: (session.get_one(Job, i).created_at, i), reverse=True)

    seen: list[str] = []
    pages = []
    cursor = None
    while True:
        rows, cursor = list_jobs(session, owner, limit=10, cursor=cursor)
        pages.append(len(rows))
        seen += [row.id for row in rows]
        if cursor is None:
            break
    assert pages == [10, 10, 5]
    assert seen == expected

    with pytest.raises(InvalidCursor):
        list_jobs(session, owner, cursor="not-a-cursor")
    with pytest.raises(ValueError):
        list_jobs(session, owner, limit=0)


def test_status_filter(session: Session) -> None:
    owner = _owner(session)
    ids = [_job(session, owner) for _ in range(4)]
    assert transition(session, ids[0], ["queued"], "running")
    assert transition(session, ids[1], ["queued"], "cancelled")
    session.commit()
    assert [j.id for j in list_jobs(session, owner, status="running")[0]] == [ids[0]]
    assert [j.id for j in list_jobs(session, owner, status="cancelled")[0]] == [ids[1]]
    assert {j.id for j in list_jobs(session, owner, status="queued")[0]} == set(ids[2:])
    with pytest.raises(ValueError):
        list_jobs(session, owner, status="paused")


# --- the state machine and leases -------------------------------------------


def test_terminal_states_are_never_overwritten(session: Session) -> None:
    owner = _owner(session)
    job_id = _job(session, owner)
    assert transition(session, job_id, ["queued"], "running")
    assert transition(session, job_id, ["running"], "succeeded", model_artifacts={"onnx": {}})
    session.commit()

    assert not transition(session, job_id, ["queued", "running", "cancelling"], "failed")
    with pytest.raises(ValueError):
        transition(session, job_id, ["succeeded"], "failed")
    cancelled = request_cancel(session, owner, job_id)
    assert cancelled is not None and cancelled.status == "succeeded"
    assert update_progress(session, job_id, step=5, epoch=1) is None
    session.commit()
    job = get_job(session, owner, job_id)
    assert job is not None
    assert job.status == "succeeded" and job.step == 0 and job.model_artifacts == {"onnx": {}}
    assert job.started_at is not None and job.finished_at is not None
    assert job.finished_at.tzinfo is not None and job.finished_at.utcoffset() == timedelta(0)


def test_cancel_queued_and_running_jobs(session: Session) -> None:
    owner = _owner(session)
    queued, running = _job(session, owner), _job(session, owner)
    assert transition(session, running, ["queued"], "running")
    assert update_progress(session, running, step=3, epoch=1, total_steps=10, metrics={"p": 0.5}) == "running"
    session.commit()
    assert request_cancel(session, owner, queued).status == "cancelled"
    assert request_cancel(session, owner, running).status == "cancelling"
    # the loop reports while it stops, and its progress write tells it the user asked to
    assert update_progress(session, running, step=4, epoch=1) == "cancelling"
    assert transition(session, running, ["cancelling"], "cancelled")
    session.commit()
    job = get_job(session, owner, running)
    assert (job.status, job.step, job.total_steps, job.metrics) == ("cancelled", 4, 10, {"p": 0.5})


def test_two_concurrent_claims_exactly_one_wins(
    session: Session, session_factory: sessionmaker[Session]
) -> None:
    owner = _owner(session)
    for _ in range(5):
        job_id = _job(session, owner)
        barrier = threading.Barrier(2)
        results: dict[str, bool] = {}

        threads = [
            threading.Thread(target=_claim, args=(session_factory, job_id, token, barrier, results))
            for token in ("w1", "w2")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert sorted(results.values()) == [False, True]
        winner = next(token for token, won in results.items() if won)
        session.expire_all()
        job = session.get_one(Job, job_id)
        assert job.lease_owner == winner and job.attempts == 1


def test_concurrent_submissions_never_overshoot_the_active_limit(
    session: Session, session_factory: sessionmaker[Session]
) -> None:
    """Eight submissions at once against a limit of three: exactly three jobs exist afterwards."""
    owner = _owner(session)
    session.commit()
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def submit() -> None:
        with session_factory() as own_session:
            barrier.wait()
            try:
                create_job(own_session, owner, {"k": 1}, name="j", max_active=3)
                own_session.commit()
                outcomes.append("created")
            except ActiveJobLimit:
                own_session.rollback()
                outcomes.append("refused")

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 5
    assert count_active_jobs(session, owner) == 3


def _claim(
    session_factory: sessionmaker[Session],
    job_id: str,
    token: str,
    barrier: threading.Barrier,
    results: dict[str, bool],
) -> None:
    """One worker: its own session, released at the same moment as its rival."""
    with session_factory() as own_session:
        barrier.wait()
        results[token] = claim_lease(own_session, job_id, token, ttl_s=60)
        own_session.commit()


def test_leases_expire_are_found_and_reaped(session: Session) -> None:
    owner = _owner(session)
    now = datetime.now(UTC)
    later = now + timedelta(seconds=61)
    live, lapsed, exhausted, stopping = (_job(session, owner, max_attempts=2) for _ in range(4))
    for job_id in (live, lapsed, exhausted, stopping):
        assert claim_lease(session, job_id, "w1", ttl_s=60, now=now)
        assert transition(session, job_id, ["queued"], "running")
    assert not claim_lease(session, live, "w2", ttl_s=60, now=now), "a live lease is held"
    assert renew_lease(session, live, "w1", ttl_s=120, now=now)
    assert not renew_lease(session, live, "w2", ttl_s=120, now=now), "only the holder renews"
    session.execute(update(Job).where(Job.id == exhausted).values(attempts=2))
    assert request_cancel(session, owner, stopping).status == "cancelling"
    session.commit()

    assert expired_leases(session, now) == []
    assert set(expired_leases(session, later)) == {lapsed, exhausted, stopping}
    assert not renew_lease(session, lapsed, "w1", ttl_s=60, now=later), "an expired lease is dead"

    assert reap_expired(session, live, now=later) is None
    assert reap_expired(session, lapsed, now=later) == "queued"
    assert reap_expired(session, exhausted, now=later) == "failed"
    assert reap_expired(session, stopping, now=later) == "cancelled"
    session.commit()
    assert expired_leases(session, later) == []
    failed = session.get_one(Job, exhausted)
    assert failed.error["code"] == "worker_lost" and failed.lease_owner is None

    assert claim_lease(session, lapsed, "w2", ttl_s=60, now=later)
    assert session.get_one(Job, lapsed).attempts == 2
    assert release_lease(session, lapsed, "w2") and not release_lease(session, lapsed, "w2")
    assert not claim_lease(session, lapsed, "w3", ttl_s=60, now=later), "attempts used up"
    session.commit()


# --- events and metrics -----------------------------------------------------


def test_events_are_written_once_per_dedup_key(session: Session) -> None:
    owner = _owner(session)
    job_id = _job(session, owner)
    batch = [
        NewEvent("status", "queued -> running", dedup_key="status:running:1"),
        NewEvent("log", "epoch 1", data={"epoch": 1}),
        NewEvent("warning", "slow data", level="warning"),
    ]
    first = add_events(session, job_id, batch)
    replay = add_events(session, job_id, [batch[0], NewEvent("status", "again", dedup_key="x")])
    session.commit()
    assert len(first) == 3 and len(replay) == 1
    events = list_events(session, job_id)
    assert [e.type for e in events] == ["status", "log", "warning", "status"]
    assert events[1].data == {"epoch": 1} and events[0].data is None
    assert [e.id for e in list_events(session, job_id, after_id=events[1].id, limit=1)] == [
        events[2].id
    ]
    with pytest.raises(ValueError):
        add_events(session, job_id, [NewEvent("log", level="fatal")])


def test_metrics_upsert_overwrites_a_replayed_step(session: Session) -> None:
    owner = _owner(session)
    job_id = _job(session, owner)
    upsert_metrics(session, job_id, [MetricPoint("train/loss", 10, 2.0, epoch=0)])
    upsert_metrics(
        session,
        job_id,
        [MetricPoint("train/loss", 10, 1.5, epoch=0), MetricPoint("train/loss", 10, 1.0, epoch=0)],
    )
    upsert_metrics(session, job_id, [MetricPoint("eval/map_at_r", 10, 0.4, epoch=0)])
    upsert_metrics(session, job_id, [MetricPoint("eval/map_at_r", 20, 0.6, epoch=1)])
    session.commit()
    losses = list_metrics(session, job_id, name="train/loss")
    assert [(m.step, m.value) for m in losses] == [(10, 1.0)]
    assert latest_metrics(session, job_id, prefix="eval/") == {"eval/map_at_r": 0.6}
    assert [m.step for m in list_metrics(session, job_id, since_step=10)] == [20]
    with pytest.raises(ValueError):
        upsert_metrics(session, job_id, [MetricPoint("train/loss", 11, float("nan"))])


def test_metric_batches_of_1000_are_single_round_trips(session: Session, engine: Engine) -> None:
    owner = _owner(session)
    job_id = _job(session, owner)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    points = [MetricPoint(f"m{i % 4}", i // 4, float(i)) for i in range(1000)]
    event.listen(engine, "before_cursor_execute", count)
    try:
        assert upsert_metrics(session, job_id, points) == 1000
        assert upsert_metrics(session, job_id, [MetricPoint(p.name, p.step, -1.0) for p in points])
    finally:
        event.remove(engine, "before_cursor_execute", count)
    session.commit()
    assert len(statements) <= 4, f"{len(statements)} statements for 2 x 1000 rows"
    assert session.scalar(select(func.count()).select_from(Metric)) == 1000
    assert session.scalar(select(func.max(Metric.value))) == -1.0

    page = list_metrics(session, job_id, limit=6)
    assert [(m.step, m.name) for m in page] == [(0, "m0"), (0, "m1"), (0, "m2"), (0, "m3")] + [
        (1, f"m{i}") for i in range(4)
    ], "a page completes its last step"


# --- artifacts --------------------------------------------------------------


@pytest.fixture(params=["db", "fs", "s3"])
def artifacts(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "db":
        return DatabaseArtifacts()
    if request.param == "s3":
        return request.getfixturevalue("s3_artifacts")
    return FilesystemArtifacts(tmp_path / "blobs")


def _blob_chunks(size: int, piece: int = 300_001) -> Iterator[bytes]:
    data = hashlib.sha256(b"seed").digest() * (size // 32 + 1)
    for start in range(0, size, piece):
        yield data[start : min(start + piece, size)]


def test_artifact_round_trip_streams_and_detects_corruption(
    session: Session, artifacts: ArtifactStore, tmp_path: Path
) -> None:
    expected = b"".join(_blob_chunks(5 * MB))
    artifact = artifacts.put(session, _blob_chunks(5 * MB))
    session.commit()
    assert artifact.complete and artifact.bytes == 5 * MB
    assert artifact.sha256 == hashlib.sha256(expected).hexdigest()

    pieces = list(artifacts.open(session, artifact.id))
    assert max(len(p) for p in pieces) <= 1 << 20 and len(pieces) >= 5
    assert b"".join(pieces) == expected
    assert artifacts.verify(session, artifact.id)

    _flip_a_byte(session, artifacts, artifact)
    assert not artifacts.verify(session, artifact.id)

    location = artifact.location
    assert artifacts.delete(session, artifact.id)
    session.commit()
    with pytest.raises(ArtifactNotFound):
        artifacts.open(session, artifact.id)
    assert not artifacts.delete(session, artifact.id)
    assert not _bytes_remain(session, artifacts, artifact.id, location)


def _bytes_remain(session: Session, artifacts: ArtifactStore, artifact_id: str, location: str | None) -> bool:
    """Whether a deleted artifact's file, object or chunks are still stored."""
    if isinstance(artifacts, FilesystemArtifacts):
        return (artifacts.root / str(location)).exists()
    if isinstance(artifacts, S3Artifacts):
        listed = artifacts.client.list_objects_v2(Bucket=artifacts.bucket, Prefix=str(location))
        return listed.get("KeyCount", 0) > 0
    return session.scalars(select(ArtifactChunk).where(ArtifactChunk.artifact_id == artifact_id)).first() is not None


def _flip_a_byte(session: Session, artifacts: ArtifactStore, artifact: Artifact) -> None:
    if isinstance(artifacts, FilesystemArtifacts):
        path = artifacts.root / str(artifact.location)
        data = bytearray(path.read_bytes())
        data[2 * MB] ^= 0xFF
        path.write_bytes(bytes(data))
        return
    if isinstance(artifacts, S3Artifacts):
        key = str(artifact.location)
        data = bytearray(artifacts.client.get_object(Bucket=artifacts.bucket, Key=key)["Body"].read())
        data[2 * MB] ^= 0xFF
        artifacts.client.put_object(Bucket=artifacts.bucket, Key=key, Body=bytes(data))
        return
    chunk = session.get_one(ArtifactChunk, (artifact.id, 2))
    chunk.data = bytes([chunk.data[0] ^ 0xFF]) + chunk.data[1:]
    session.commit()


def test_a_put_that_fails_midway_leaves_no_complete_artifact(
    session: Session, artifacts: ArtifactStore
) -> None:
    def failing() -> Iterator[bytes]:
        yield b"a" * (2 << 20)
        raise OSError("client went away")

    with pytest.raises(OSError, match="client went away"):
        artifacts.put(session, failing())
    session.commit()
    assert session.scalar(select(func.count()).select_from(Artifact)) == 0
    assert session.scalar(select(func.count()).select_from(ArtifactChunk)) == 0
    if isinstance(artifacts, FilesystemArtifacts):
        assert [p for p in artifacts.root.rglob("*") if p.is_file()] == []
    if isinstance(artifacts, S3Artifacts):
        assert artifacts.client.list_objects_v2(Bucket=artifacts.bucket)["KeyCount"] == 0
        uploads = artifacts.client.list_multipart_uploads(Bucket=artifacts.bucket)
        assert uploads.get("Uploads", []) == [], "a failed put aborts its multipart upload"


def test_incomplete_artifacts_cannot_be_read(session: Session) -> None:
    artifact = Artifact(backend="db", complete=False)
    session.add(artifact)
    session.commit()
    with pytest.raises(ArtifactNotFound):
        DatabaseArtifacts().open(session, artifact.id)
    assert not DatabaseArtifacts().verify(session, artifact.id)


def test_filesystem_store_reads_artifacts_kept_in_the_database(
    session: Session, tmp_path: Path
) -> None:
    artifact = DatabaseArtifacts().put(session, [b"hello ", b"world"])
    session.commit()
    files = FilesystemArtifacts(tmp_path)
    assert b"".join(files.open(session, artifact.id)) == b"hello world"
    assert files.verify(session, artifact.id)


def test_artifact_store_from_url(tmp_path: Path) -> None:
    assert isinstance(artifact_store_from_url("db"), DatabaseArtifacts)
    from_url = artifact_store_from_url(f"file://{tmp_path}/a%20b")
    assert isinstance(from_url, FilesystemArtifacts) and from_url.root == tmp_path / "a b"
    plain = artifact_store_from_url(str(tmp_path))
    assert isinstance(plain, FilesystemArtifacts) and plain.root == tmp_path
    s3 = artifact_store_from_url("s3://bucket/some%20prefix/", "http://127.0.0.1:9")
    assert isinstance(s3, S3Artifacts) and (s3.bucket, s3.prefix) == ("bucket", "some prefix")
    assert s3.client.meta.endpoint_url == "http://127.0.0.1:9"
    for bad in ("", "ftp://host/x", "file://elsewhere/x", "s3:///prefix"):
        with pytest.raises(ValueError):
            artifact_store_from_url(bad)


# --- checkpoints and datasets -----------------------------------------------


def test_checkpoints_point_at_complete_artifacts(session: Session) -> None:
    owner = _owner(session)
    job_id = _job(session, owner)
    store = DatabaseArtifacts()
    for step in (100, 300, 200):
        add_checkpoint(
            session, job_id, step=step, epoch=step // 100, artifact=store.put(session, [b"s"])
        )
    session.commit()
    assert [c.step for c in list_checkpoints(session, job_id)] == [100, 200, 300]
    latest = latest_checkpoint(session, job_id)
    assert latest is not None and latest.step == 300
    assert latest.sha256 == hashlib.sha256(b"s").hexdigest()
    incomplete = Artifact(id="art_x", backend="db", complete=False)
    with pytest.raises(ValueError):
        add_checkpoint(session, job_id, step=1, epoch=0, artifact=incomplete)


def test_datasets_are_sanitised_listed_and_deleted_with_their_bytes(session: Session) -> None:
    owner = _owner(session)
    store = DatabaseArtifacts()
    made = [
        create_dataset(
            session,
            owner,
            filename=name,
            format="csv",
            rows=2,
            info={"columns": ["x", "y"]},
            artifact=store.put(session, [b"x,y\n1,2\n3,4\n"]),
        )
        for name in ("../../etc/passwd", "C:\\data\\my file.csv", "...")
    ]
    session.commit()
    assert [d.filename for d in made] == ["passwd", "my_file.csv", "upload"]
    rows, cursor = list_datasets(session, owner, limit=2)
    more, end = list_datasets(session, owner, limit=2, cursor=cursor)
    assert {d.id for d in rows + more} == {d.id for d in made} and end is None

    artifact_id = made[0].artifact_id
    assert delete_dataset(session, owner, made[0].id, store)
    session.commit()
    assert get_dataset(session, owner, made[0].id) is None
    assert session.get(Artifact, artifact_id) is None


# --- owners and keys --------------------------------------------------------


def test_api_keys_authenticate_revoke_and_are_stored_only_hashed(session: Session) -> None:
    owner = _owner(session)
    key, plain = create_api_key(session, owner)
    session.commit()
    assert plain.startswith("em_") and key.prefix == plain[:8]

    authenticated = authenticate(session, plain)
    assert authenticated is not None and authenticated.id == owner
    session.commit()
    first_use = session.get_one(ApiKey, key.id).last_used_at
    assert first_use is not None
    authenticate(session, plain, now=first_use + timedelta(seconds=30))
    assert session.get_one(ApiKey, key.id).last_used_at == first_use, "at most once a minute"
    authenticate(session, plain, now=first_use + timedelta(seconds=90))
    assert session.get_one(ApiKey, key.id).last_used_at == first_use + timedelta(seconds=90)

    assert authenticate(session, plain[:-1] + ("A" if plain[-1] != "A" else "B")) is None
    assert authenticate(session, "em_" + "x" * 43) is None
    assert authenticate(session, "not a key") is None

    _assert_appears_nowhere(session, plain)

    assert revoke_api_key(session, owner, key.id)
    assert not revoke_api_key(session, owner, key.id)
    session.commit()
    assert authenticate(session, plain) is None


def _assert_appears_nowhere(session: Session, secret: str) -> None:
    for table in Base.metadata.sorted_tables:
        for row in session.execute(select(table)):
            for value in row:
                assert secret not in str(value), f"plain key found in {table.name}"


def test_keys_of_another_owner_cannot_be_revoked(session: Session) -> None:
    alice, bob = _owner(session, "alice"), _owner(session, "bob")
    key, plain = create_api_key(session, alice)
    session.commit()
    assert not revoke_api_key(session, bob, key.id)
    assert authenticate(session, plain) is not None


def test_migrate_is_idempotent(database_url: str) -> None:
    migrate(database_url)
    assert _schema_diff(database_url, Base.metadata) == []


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'settings.db'}")
    with engine.connect() as connection:
        pragmas = {
            name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("journal_mode", "foreign_keys", "busy_timeout")
        }
    engine.dispose()
    assert pragmas["journal_mode"] == "wal" and pragmas["foreign_keys"] == 1
    assert pragmas["busy_timeout"] > 0
    assert os.path.exists(tmp_path / "settings.db")
