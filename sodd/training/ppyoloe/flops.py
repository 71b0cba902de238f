"""Parameter and multiply-accumulate counts of a configuration, as exported (RepVGG branches fused).

MACs are counted with forward hooks on convolutions and linear layers plus the two attention
matmuls; element-wise work (BN, activations, pooling) is left out, as in the usual detector tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import paddle
import paddle.nn as nn

from sodd.training.ppyoloe.model import build_inference
from sodd.training.ppyoloe.neck import SelfAttention


@dataclass(frozen=True)
class ModelStats:
    name: str
    input_size: int
    params: int  # trainable weights of the training form
    exported_values: int  # float32 values in the exported parameter file (fused, plus buffers)
    macs: int

    @property
    def exported_mib(self) -> float:
        return self.exported_values * 4 / 2**20


def count(config: str, overrides: dict | None = None) -> ModelStats:
    from sodd.training.ppyoloe.model import build_model

    train_form = build_model(config, overrides)
    params = sum(int(np.prod(p.shape)) for p in train_form.parameters() if not p.stop_gradient)
    del train_form
    net = build_inference(config, overrides)
    values = sum(int(np.prod(v.shape)) for v in net.state_dict().values())
    macs = [0]

    def conv_hook(layer: nn.Conv2D, _inp, out) -> None:
        k = int(np.prod(layer.weight.shape[1:]))
        macs[0] += int(np.prod(out.shape)) * k

    def linear_hook(layer: nn.Linear, _inp, out) -> None:
        macs[0] += int(np.prod(out.shape)) * int(layer.weight.shape[0])

    def attn_hook(layer: SelfAttention, inp, _out) -> None:
        b, n, d = inp[0].shape
        macs[0] += 2 * b * n * n * d  # q @ k^T and attn @ v

    hooks = []
    for layer in net.sublayers():
        if isinstance(layer, nn.Conv2D):
            hooks.append(layer.register_forward_post_hook(conv_hook))
        elif isinstance(layer, nn.Linear):
            hooks.append(layer.register_forward_post_hook(linear_hook))
        elif isinstance(layer, SelfAttention):
            hooks.append(layer.register_forward_post_hook(attn_hook))
    size = net.model.cfg.input_size
    with paddle.no_grad():
        net.model(paddle.zeros([1, 3, size, size]))
    for h in hooks:
        h.remove()
    return ModelStats(config, size, params, values, macs[0])
