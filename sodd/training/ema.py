"""Exponential moving average of the weights (and BN statistics), with PP-YOLOE's warm-up ramp."""

from __future__ import annotations

import math

import paddle


class ModelEMA:
    def __init__(self, model: paddle.nn.Layer, decay: float = 0.9998, ramp_steps: float = 2000.0) -> None:
        self.decay = decay
        self.ramp_steps = ramp_steps
        self.step = 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @paddle.no_grad()
    def update(self, model: paddle.nn.Layer) -> None:
        self.step += 1
        # Early weights change fast; a ramped decay keeps the average from lagging behind them.
        d = self.decay * (1 - math.exp(-self.step / self.ramp_steps))
        for k, v in model.state_dict().items():
            if v.dtype in (paddle.float32, paddle.float64):
                self.state[k].set_value(self.state[k] * d + v.detach() * (1 - d))
            else:
                self.state[k].set_value(v.detach())

    def state_dict(self) -> dict:
        return {"step": self.step, "weights": self.state}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        for k, v in state["weights"].items():
            self.state[k].set_value(v)
