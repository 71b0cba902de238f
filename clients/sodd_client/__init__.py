"""Python client for the sodd small-object detection daemon (the light `sodd-client` distribution).

    from sodd_client import Client
    with Client("127.0.0.1:50051") as client:
        for res in client.predict("photo.jpg"):
            res.print()
            res.save_to_json("output/")
"""

from sodd_client.client import (
    AsyncClient,
    Client,
    StreamFrameError,
    channel_options,
    raw_image,
    service_config,
    slicing_message,
)
from sodd_client.results import DetResult

__all__ = ["AsyncClient", "Client", "DetResult", "StreamFrameError", "channel_options", "raw_image",
           "service_config", "slicing_message"]
