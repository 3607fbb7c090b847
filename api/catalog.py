"""``GET /v1/catalog``: every dataset, encoder, loss, mixing method and metric a spec can name.

No key is needed: the catalog describes the software, not anyone's data
(the same list ``embedmix catalog`` prints), and a client can build a spec form
from it before it has a key.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from embedmix.api.deps import RuntimeDep

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/catalog")
def read_catalog(runtime: RuntimeDep) -> dict[str, list[dict[str, Any]]]:
    """Names, parameters with defaults and ranges, data needs and source papers."""
    return runtime.catalog
