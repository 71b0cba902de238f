"""Seeded synthetic small-object detection datasets in PaddleX's COCO layout."""

from sodd.datasets.synth.generator import CLASSES, SynthConfig, generate_dataset

__all__ = ["CLASSES", "SynthConfig", "generate_dataset"]
