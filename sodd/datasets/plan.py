"""What a conversion computes before it writes anything."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sodd.datasets.atomic import AtomicChanges


@dataclass
class Indexer:
    """Ids from 1 in order of first appearance (PaddleX's rule for categories and images)."""

    ids: dict[str, int] = field(default_factory=dict)

    def get(self, key: str) -> int:
        return self.ids.setdefault(key, len(self.ids) + 1)


@dataclass
class Conversion:
    """The COCO files a conversion will write, and the changes that write them."""

    splits: dict[str, dict[str, Any]]
    changes: AtomicChanges
    notes: list[str] = field(default_factory=list)

    @property
    def num_images(self) -> dict[str, int]:
        return {name: len(coco["images"]) for name, coco in self.splits.items()}

    @property
    def num_annotations(self) -> dict[str, int]:
        return {name: len(coco["annotations"]) for name, coco in self.splits.items()}
