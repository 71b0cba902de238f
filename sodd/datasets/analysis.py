"""The check's histogram: objects per class, and object sizes against COCO's area limits."""

from __future__ import annotations

import math
from pathlib import Path

from sodd.datasets.coco import Dataset

# COCO's small / medium / large limits are areas of 32*32 and 96*96 px.
SMALL_LIMIT_PX = 32
LARGE_LIMIT_PX = 96


def size_counts(dataset: Dataset) -> dict[str, int]:
    """Objects per COCO size bucket, from box area (w*h) as COCOeval's ranges are defined."""
    counts = {"small": 0, "medium": 0, "large": 0}
    for split in dataset.splits.values():
        for ann in split.coco["annotations"]:
            area = float(ann["bbox"][2]) * float(ann["bbox"][3])
            if area < SMALL_LIMIT_PX**2:
                counts["small"] += 1
            elif area < LARGE_LIMIT_PX**2:
                counts["medium"] += 1
            else:
                counts["large"] += 1
    return counts


def draw_histogram(dataset: Dataset, path: Path) -> None:
    # Imported here: matplotlib takes half a second to load, and every `sodd` command imports this module.
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a server
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, NullLocator

    names = dataset.categories
    per_split = {name: {cat_id: 0 for cat_id in names} for name in dataset.splits}
    sizes: list[float] = []
    for name, split in dataset.splits.items():
        for ann in split.coco["annotations"]:
            per_split[name][ann["category_id"]] = per_split[name].get(ann["category_id"], 0) + 1
            sizes.append(math.sqrt(float(ann["bbox"][2]) * float(ann["bbox"][3])))

    # Classes by training count, most frequent first, as PaddleX orders them.
    first = next(iter(per_split.values()), {})
    order = sorted(names, key=lambda c: first.get(c, 0), reverse=True)
    fig, (bars, hist) = plt.subplots(
        1, 2, figsize=(max(12, 8 + len(order) * 0.25), 5), dpi=120, gridspec_kw={"width_ratios": [3, 2]}
    )
    width = 0.8 / max(1, len(per_split))
    for k, (split_name, counts) in enumerate(per_split.items()):
        xs = [i + k * width for i in range(len(order))]
        bars.bar(xs, [counts.get(c, 0) for c in order], width=width, label=split_name)
    bars.set_xticks([i + width * (len(per_split) - 1) / 2 for i in range(len(order))])
    bars.set_xticklabels([names[c] for c in order], rotation=90)
    bars.set_ylabel("Objects")
    bars.set_title("Objects per class")
    bars.legend()

    if sizes:
        low, high = max(1.0, min(sizes)), max(sizes) * 1.05
        edges = _log_edges(min(low, SMALL_LIMIT_PX / 2), max(high, LARGE_LIMIT_PX * 2), 40)
        hist.hist(sizes, bins=edges, color="#4c72b0")
        hist.set_xscale("log")
        ticks = [t for t in (4, 8, 16, 32, 64, 96, 128, 256, 512, 1024, 2048) if edges[0] <= t <= edges[-1]]
        hist.set_xticks(ticks, [str(t) for t in ticks])
        hist.xaxis.set_minor_locator(NullLocator())
    for axis in (bars, hist):
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    counts = size_counts(dataset)
    for limit, label in ((SMALL_LIMIT_PX, "32 px"), (LARGE_LIMIT_PX, "96 px")):
        hist.axvline(limit, color="#c44e52", linestyle="--")
        hist.text(limit, 0.98, f" {label}", color="#c44e52", va="top", transform=hist.get_xaxis_transform())
    hist.set_xlabel("Object size sqrt(w*h), px")
    hist.set_ylabel("Objects")
    hist.set_title(f"small {counts['small']}  medium {counts['medium']}  large {counts['large']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _log_edges(low: float, high: float, n: int) -> list[float]:
    step = (math.log(high) - math.log(low)) / n
    return [math.exp(math.log(low) + i * step) for i in range(n + 1)]
