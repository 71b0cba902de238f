"""CustomCSPPAN neck with SPP and, for the SOD variant, a transformer encoder on the top level."""

from __future__ import annotations

import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from sodd.training.ppyoloe.layers import SPP, BasicBlock, ConvBN, scaled


def sincos_position_embedding(h: int, w: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """2-D sine-cosine embedding [1, h*w, dim] (row-major tokens), computed once at build time."""
    gw, gh = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    pos_dim = dim // 4
    omega = 1.0 / temperature ** (np.arange(pos_dim, dtype=np.float32) / pos_dim)
    ow = gw.reshape(-1, 1) * omega[None]
    oh = gh.reshape(-1, 1) * omega[None]
    emb = np.concatenate([np.sin(ow), np.cos(ow), np.sin(oh), np.cos(oh)], axis=1)
    return emb[None].astype(np.float32)


class SelfAttention(nn.Layer):
    """Multi-head self-attention written with reshape/transpose/matmul only (Paddle Lite safe)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, x: paddle.Tensor) -> paddle.Tensor:
        return x.reshape([0, 0, self.heads, self.head_dim]).transpose([0, 2, 1, 3])

    def forward(self, qk: paddle.Tensor, v: paddle.Tensor) -> paddle.Tensor:
        q, k, v = self._split(self.q_proj(qk)), self._split(self.k_proj(qk)), self._split(self.v_proj(v))
        attn = F.softmax(paddle.matmul(q, k, transpose_y=True) * (1.0 / math.sqrt(self.head_dim)), axis=-1)
        out = paddle.matmul(attn, v).transpose([0, 2, 1, 3])
        return self.out_proj(out.reshape([0, 0, self.heads * self.head_dim]))


class EncoderLayer(nn.Layer):
    """Post-norm encoder layer; the position embedding is added to queries and keys only."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.attn = SelfAttention(dim, heads)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: paddle.Tensor, pos: paddle.Tensor) -> paddle.Tensor:
        x = self.norm1(x + self.dropout(self.attn(x + pos, x)))
        y = self.linear2(self.dropout(F.gelu(self.linear1(x))))
        return self.norm2(x + self.dropout(y))


class CSPStage(nn.Layer):
    def __init__(self, ch_in: int, ch_out: int, n: int, spp: bool) -> None:
        super().__init__()
        mid = ch_out // 2
        self.conv1 = ConvBN(ch_in, mid, 1)
        self.conv2 = ConvBN(ch_in, mid, 1)
        blocks: list[nn.Layer] = []
        for i in range(n):
            blocks.append(BasicBlock(mid, mid, shortcut=False))
            if spp and i == (n - 1) // 2:
                blocks.append(SPP(mid * 4, mid))
        self.convs = nn.Sequential(*blocks)
        self.conv3 = ConvBN(mid * 2, ch_out, 1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.conv3(paddle.concat([self.conv1(x), self.convs(self.conv2(x))], axis=1))


class CustomCSPPAN(nn.Layer):
    """Top-down FPN then bottom-up PAN over (C3, C4, C5); outputs strides 32, 16, 8 (top first)."""

    def __init__(
        self,
        in_channels: list[int],
        out_channels: tuple[int, ...],
        block_num: int,
        depth_mult: float,
        width_mult: float,
        use_trans: bool,
        trans_layers: int,
        trans_heads: int,
        trans_ffn: int,
        eval_size: int | None,
    ) -> None:
        super().__init__()
        out_ch = [scaled(c, width_mult) for c in out_channels]  # top level first
        n = scaled(block_num, depth_mult)
        self.hidden_dim = in_channels[-1]
        self.use_trans = use_trans
        if use_trans:
            self.encoder = nn.LayerList(
                [EncoderLayer(self.hidden_dim, trans_heads, trans_ffn) for _ in range(trans_layers)]
            )
            if eval_size is not None:
                # Persistable, as in PaddleDetection's export: it is part of the parameter file.
                g = eval_size // 32
                self.register_buffer(
                    "pos_embed", paddle.to_tensor(sincos_position_embedding(g, g, self.hidden_dim))
                )
            else:
                self.pos_embed = None
        ins = in_channels[::-1]
        self.fpn_stages = nn.LayerList()
        self.fpn_routes = nn.LayerList()
        ch_pre = 0
        for i, (ci, co) in enumerate(zip(ins, out_ch, strict=True)):
            if i > 0:
                ci += ch_pre // 2
            self.fpn_stages.append(CSPStage(ci, co, n, spp=(i == 0)))
            if i < len(ins) - 1:
                self.fpn_routes.append(ConvBN(co, co // 2, 1))
            ch_pre = co
        self.pan_stages = nn.LayerList()
        self.pan_routes = nn.LayerList()
        for i in reversed(range(len(ins) - 1)):
            self.pan_routes.append(ConvBN(out_ch[i + 1], out_ch[i + 1], 3, stride=2))
            self.pan_stages.append(CSPStage(out_ch[i] + out_ch[i + 1], out_ch[i], n, spp=False))
        self.out_channels = out_ch  # top level first, like the outputs

    def _encode(self, x: paddle.Tensor) -> paddle.Tensor:
        h, w = x.shape[2], x.shape[3]
        pos = self.pos_embed
        if pos is None or pos.shape[1] != h * w:
            pos = paddle.to_tensor(sincos_position_embedding(h, w, self.hidden_dim))
        tokens = x.reshape([0, self.hidden_dim, -1]).transpose([0, 2, 1])
        for layer in self.encoder:
            tokens = layer(tokens, pos)
        return tokens.transpose([0, 2, 1]).reshape([0, self.hidden_dim, h, w])

    def forward(self, feats: list[paddle.Tensor]) -> list[paddle.Tensor]:
        blocks = feats[::-1]
        fpn = []
        route = None
        for i, block in enumerate(blocks):
            if i == 0 and self.use_trans:
                block = self._encode(block)
            if i > 0:
                block = paddle.concat([route, block], axis=1)
            route = self.fpn_stages[i](block)
            fpn.append(route)
            if i < len(blocks) - 1:
                route = F.interpolate(self.fpn_routes[i](route), scale_factor=2.0, mode="nearest")
        pan = [fpn[-1]]
        route = fpn[-1]
        for j, i in enumerate(reversed(range(len(blocks) - 1))):
            route = self.pan_routes[j](route)
            route = self.pan_stages[j](paddle.concat([route, fpn[i]], axis=1))
            pan.append(route)
        return pan[::-1]
