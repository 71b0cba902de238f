"""Building blocks shared by the backbone and the neck (CSPResNet / CustomCSPPAN)."""

from __future__ import annotations

import paddle
import paddle.nn as nn
import paddle.nn.functional as F


def scaled(c: int, mult: float) -> int:
    return max(round(c * mult), 1)


class ConvBN(nn.Layer):
    """Conv (no bias) + BatchNorm + optional SiLU ("swish")."""

    def __init__(self, ch_in: int, ch_out: int, k: int = 3, stride: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2D(ch_in, ch_out, k, stride=stride, padding=k // 2, bias_attr=False)
        self.bn = nn.BatchNorm2D(ch_out)
        self.act = act

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.bn(self.conv(x))
        return F.silu(x) if self.act else x


class RepVggBlock(nn.Layer):
    """3x3 + 1x1 branches while training; `convert_to_deploy` fuses them into one 3x3 conv,
    which is what PaddleDetection exports (and what the published parameter-file sizes count)."""

    def __init__(self, ch_in: int, ch_out: int, use_alpha: bool = False) -> None:
        super().__init__()
        self.ch_in, self.ch_out = ch_in, ch_out
        self.conv1 = ConvBN(ch_in, ch_out, 3, act=False)
        self.conv2 = ConvBN(ch_in, ch_out, 1, act=False)
        one = nn.initializer.Constant(1.0)
        self.alpha = self.create_parameter([1], default_initializer=one) if use_alpha else None
        self.fused: nn.Conv2D | None = None

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.fused is not None:
            return F.silu(self.fused(x))
        y2 = self.conv2(x)
        if self.alpha is not None:
            y2 = self.alpha * y2
        return F.silu(self.conv1(x) + y2)

    @paddle.no_grad()
    def convert_to_deploy(self) -> None:
        if self.fused is not None:
            return
        k3, b3 = _fuse_bn(self.conv1)
        k1, b1 = _fuse_bn(self.conv2)
        a = float(self.alpha.numpy()[0]) if self.alpha is not None else 1.0
        k = k3 + a * F.pad(k1, [1, 1, 1, 1])
        fused = nn.Conv2D(self.ch_in, self.ch_out, 3, padding=1)
        fused.weight.set_value(k)
        fused.bias.set_value(b3 + a * b1)
        self.fused = fused
        del self.conv1, self.conv2
        if self.alpha is not None:
            del self.alpha
            self.alpha = None


def _fuse_bn(block: ConvBN) -> tuple[paddle.Tensor, paddle.Tensor]:
    bn = block.bn
    std = paddle.sqrt(bn._variance + bn._epsilon)
    t = (bn.weight / std).reshape([-1, 1, 1, 1])
    return block.conv.weight * t, bn.bias - bn._mean * bn.weight / std


class BasicBlock(nn.Layer):
    def __init__(self, ch_in: int, ch_out: int, shortcut: bool = True, use_alpha: bool = False) -> None:
        super().__init__()
        self.conv1 = ConvBN(ch_in, ch_out, 3)
        self.conv2 = RepVggBlock(ch_out, ch_out, use_alpha=use_alpha)
        self.shortcut = shortcut and ch_in == ch_out

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.shortcut else y


class EffectiveSE(nn.Layer):
    """ESE attention: one 1x1 conv on the pooled feature, hard-sigmoid gate."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.fc = nn.Conv2D(ch, ch, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return x * F.hardsigmoid(self.fc(x.mean(axis=[2, 3], keepdim=True)))


class SPP(nn.Layer):
    def __init__(self, ch_in: int, ch_out: int, pool_sizes: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        self.pool_sizes = pool_sizes
        self.conv = ConvBN(ch_in, ch_out, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        outs = [x] + [F.max_pool2d(x, k, stride=1, padding=k // 2) for k in self.pool_sizes]
        return self.conv(paddle.concat(outs, axis=1))
