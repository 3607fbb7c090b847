"""Which export the embed routes run (api.models._served_file): a text model's ONNX zip
(onnxruntime), an array model's safetensors file (torch), each falling back to the other, and
never a two-modality job's ONNX, whose graph takes both inputs to the fused embedding while
/embed serves the first modality."""

from __future__ import annotations

import pytest

from embedmix.api.errors import ApiError
from embedmix.api.models import _served_file
from embedmix.store.models import Job

ONNX = {"artifact_id": "art_onnx", "sha256": "a", "bytes": 1, "file": "model.onnx"}
WEIGHTS = {"artifact_id": "art_st", "sha256": "b", "bytes": 1, "file": "model.safetensors"}
ARRAY_CARD = {"input": {"shape": [40], "dtype": "float32"}}
TEXT_CARD = {"input": {"type": "text", "shape": [], "dtype": "string"}}
PAIR_CARD = {"input": {"shape": [40], "modalities": [{"input": "input"}, {"input": "input_2"}]}}


def job(artifacts: dict[str, dict[str, object]], card: dict[str, object]) -> Job:
    return Job(id="job_x", status="succeeded", model_artifacts=artifacts, card=card)


@pytest.mark.parametrize(
    ("artifacts", "card", "served"),
    [
        ({"onnx": ONNX, "safetensors": WEIGHTS}, TEXT_CARD, "onnx"),
        ({"safetensors": WEIGHTS}, TEXT_CARD, "safetensors"),
        ({"onnx": ONNX, "safetensors": WEIGHTS}, ARRAY_CARD, "safetensors"),
        ({"onnx": ONNX}, ARRAY_CARD, "onnx"),
        ({"onnx": ONNX, "safetensors": WEIGHTS}, PAIR_CARD, "safetensors"),
    ],
)
def test_the_served_export(artifacts: dict[str, dict[str, object]], card: dict[str, object], served: str) -> None:
    assert _served_file(job(artifacts, card))[0] == served


def test_a_pair_job_without_safetensors_is_told_to_export_it() -> None:
    with pytest.raises(ApiError) as refused:
        _served_file(job({"onnx": ONNX}, PAIR_CARD))
    assert refused.value.status_code == 404 and "'safetensors'" in refused.value.message
