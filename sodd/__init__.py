"""sodd: the small-object detection daemon, and PaddleX's Python API in-process.

`from sodd import create_model` imports the detection stack (paddle, OpenCV) only when called, so
`import sodd` stays cheap for the daemon's command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sodd.observability.quiet import filter_import_warnings

# `import paddle` warns that ccache is missing, which only matters to those compiling extensions.
filter_import_warnings()

if TYPE_CHECKING:
    from sodd.paddlex_api import SoddModel

__all__ = ["create_model"]


def create_model(*args: Any, **kwargs: Any) -> SoddModel:
    """PaddleX's `create_model(model_name=..., model_dir=..., device="cpu")`; see `sodd.paddlex_api`."""
    from sodd.paddlex_api import create_model as _create_model

    return _create_model(*args, **kwargs)
