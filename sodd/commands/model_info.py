"""`sodd model-info`: parameters, exported parameter-file size and FLOPs per model configuration."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("model-info", help="print parameters and FLOPs per model configuration",
                              description=__doc__)
    p.add_argument("configs", nargs="*", help="configuration names (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sodd.training.ppyoloe.config import CONFIGS
    from sodd.training.ppyoloe.flops import count

    names = args.configs or list(CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        print(f"unknown configuration(s): {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
        return 2
    print(f"{'config':32} {'input':>6} {'params (M)':>11} {'pdiparams (MiB)':>16} {'GMACs':>9} {'GFLOPs':>9}")
    for name in names:
        s = count(name)
        print(f"{name:32} {s.input_size:>6} {s.params / 1e6:>11.2f} {s.exported_mib:>16.2f} "
              f"{s.macs / 1e9:>9.2f} {2 * s.macs / 1e9:>9.2f}", flush=True)
    print("pdiparams: float32 values in the exported parameter file (RepVGG fused; position embedding and "
          "anchors included). GFLOPs = 2 x GMACs at batch 1.")
    return 0
