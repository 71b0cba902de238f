"""Python client for the sodd small-object detection daemon."""

from sodd_client.client import AsyncClient, Client, raw_image

__all__ = ["AsyncClient", "Client", "raw_image"]
