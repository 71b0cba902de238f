"""What the detection core tells its observer about each request it answered, as typed values.

The core (sodd.runtime.detection) builds a `DetectionReport` where the request finishes and hands
it to the `DetectionObserver` it was given; the engine reports each predictor run's size the same
way. The daemon's `Metrics` is such an observer; in-process callers run without one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ImageReport:
    """One image of an answered request."""

    detections: int  # boxes returned, after the threshold and max_detections
    pixels: int  # decoded width times height
    slices: int  # network runs: 1, or the windows (plus the whole image) when sliced
    queue: float  # seconds waiting for a predictor (the longest of its runs)
    inference: float  # seconds of the predictor run(s) that carried it, shared with batch mates
    postprocess: float
    slicing: float  # 0 when the image ran whole
    merging: float  # 0 when the image ran whole


@dataclass(frozen=True)
class DetectionReport:
    """An answered request: the model version that ran it, and its images."""

    model: str
    version: int
    device: str
    decode: float  # seconds, for all the request's images together
    preprocess: float  # seconds, for all the request's images together
    images: tuple[ImageReport, ...]

    @property
    def labels(self) -> tuple[str, str, str]:
        return self.model, str(self.version), self.device


class DetectionObserver(Protocol):
    """Told what the detection core and the engine did. Called on the thread that did it (an
    inference or worker thread), so it must be thread-safe and quick."""

    def detected(self, report: DetectionReport) -> None:
        """A request was answered."""

    def batch_ran(self, model: str, version: int, device: str, images: int) -> None:
        """A predictor run carried `images` images of requests (warm-up runs are not reported)."""
