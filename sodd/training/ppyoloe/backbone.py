"""CSPResNet backbone (PP-YOLOE): large stem, CSP stages of RepVGG basic blocks, ESE attention."""

from __future__ import annotations

import paddle
import paddle.nn as nn

from sodd.training.ppyoloe.layers import BasicBlock, ConvBN, EffectiveSE, scaled


class CSPResStage(nn.Layer):
    def __init__(self, ch_in: int, ch_out: int, n: int, use_alpha: bool) -> None:
        super().__init__()
        ch_mid = (ch_in + ch_out) // 2
        self.conv_down = ConvBN(ch_in, ch_mid, 3, stride=2)
        self.conv1 = ConvBN(ch_mid, ch_mid // 2, 1)
        self.conv2 = ConvBN(ch_mid, ch_mid // 2, 1)
        half = ch_mid // 2
        self.blocks = nn.Sequential(*[BasicBlock(half, half, True, use_alpha) for _ in range(n)])
        self.attn = EffectiveSE(ch_mid)
        self.conv3 = ConvBN(ch_mid, ch_out, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        x = self.conv_down(x)
        y = paddle.concat([self.conv1(x), self.blocks(self.conv2(x))], axis=1)
        return self.conv3(self.attn(y))


class CSPResNet(nn.Layer):
    """Returns the stride-8, -16 and -32 features (stages 1..3)."""

    def __init__(
        self,
        layers: tuple[int, ...],
        channels: tuple[int, ...],
        depth_mult: float,
        width_mult: float,
        use_alpha: bool = True,
    ) -> None:
        super().__init__()
        ch = [scaled(c, width_mult) for c in channels]
        n = [scaled(lay, depth_mult) for lay in layers]
        self.stem = nn.Sequential(
            ConvBN(3, ch[0] // 2, 3, stride=2),
            ConvBN(ch[0] // 2, ch[0] // 2, 3),
            ConvBN(ch[0] // 2, ch[0], 3),
        )
        self.stages = nn.LayerList([CSPResStage(ch[i], ch[i + 1], n[i], use_alpha) for i in range(len(n))])
        self.out_channels = ch[2:]

    def forward(self, x: paddle.Tensor) -> list[paddle.Tensor]:
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 1:
                outs.append(x)
        return outs
