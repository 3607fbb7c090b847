"""Python client for the embedmix HTTP API (v1), on httpx. The CLI is built on it."""

from embedmix.client.http import ApiError, EmbedmixClient

__all__ = ["ApiError", "EmbedmixClient"]
