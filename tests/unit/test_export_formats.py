"""The export formats are one list, the defaults include ONNX, a text-only format is refused for arrays,
onnx_int8 alone leaves no fp32 file behind, and a zip bundle is byte-identical when written twice."""

from __future__ import annotations

import typing
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from embedmix.api import create_app
from embedmix.api.models import ModelFormat
from embedmix.core import catalog
from embedmix.core.data import load_dataset
from embedmix.core.errors import SpecError
from embedmix.core.export import FILENAMES, export, write_zip
from embedmix.core.spec import ExportSpec, validate_spec
from embedmix.core.train import train
from embedmix.service.settings import Settings
from embedmix.store import create_api_key, create_owner, make_engine, make_session_factory
from embedmix.store.db import migrate


def test_spec_api_and_file_names_read_the_one_list_of_formats() -> None:
    names = tuple(catalog.EXPORT_FORMATS)
    (spec_literal,) = typing.get_args(ExportSpec.model_fields["formats"].annotation)
    assert typing.get_args(spec_literal) == names
    assert typing.get_args(ModelFormat) == names
    assert tuple(FILENAMES) == names
    assert {"onnx_int8", "sentence_transformers"} <= set(names)


def test_defaults_export_safetensors_and_onnx() -> None:
    assert validate_spec({"dataset": {"name": "blobs"}}).export.formats == ["safetensors", "onnx"]


@pytest.mark.parametrize("encoder", ["mlp", "conv1d"])
def test_sentence_transformers_is_refused_for_an_array_encoder(encoder: str) -> None:
    with pytest.raises(SpecError) as caught:
        validate_spec({"dataset": {"name": "mnist1d"}, "model": {"encoder": encoder},
                       "export": {"formats": ["safetensors", "sentence_transformers"]}})
    (error,) = caught.value.errors
    assert error["field"] == "export.formats" and "text encoders" in error["message"]


def test_the_api_refuses_it_with_a_422_naming_export_formats(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    migrate(database_url)
    with make_session_factory(make_engine(database_url))() as session:
        _, key = create_api_key(session, create_owner(session, "alice").id)
        session.commit()
    settings = Settings(database_url=database_url, redis_url="redis://127.0.0.1:1/0", artifacts="db",
                        work_dir=str(tmp_path))
    spec = {"dataset": {"name": "blobs"}, "export": {"formats": ["sentence_transformers"]}}
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/jobs", json=spec, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == "export.formats"


def test_onnx_int8_alone_exports_only_the_int8_file(tmp_path: Path) -> None:
    spec = validate_spec({"name": "int8", "dataset": {"name": "blobs", "size": 200, "params": {"num_features": 8}},
                          "model": {"embedding_dim": 8, "width": 16}, "train": {"epochs": 1, "batch_size": 32},
                          "export": {"formats": ["onnx_int8"]}})
    data = load_dataset(spec)
    card = export(train(spec, data), data, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json", "model.int8.onnx"]
    assert list(card["files"]) == ["onnx_int8"] and card["files"]["onnx_int8"]["parity"]["test_samples"] == 40


def test_a_zip_bundle_is_byte_identical_when_written_twice(tmp_path: Path) -> None:
    member = tmp_path / "model.onnx"
    member.write_bytes(b"\x00" * 1000)
    first, second = tmp_path / "a.zip", tmp_path / "b.zip"
    write_zip(first, {"model.onnx": member, "inputs.json": b"{}"})
    write_zip(second, {"inputs.json": b"{}", "model.onnx": member})
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        assert archive.namelist() == ["inputs.json", "model.onnx"] and archive.read("model.onnx") == member.read_bytes()
