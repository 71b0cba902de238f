"""The training loop: AdamW or SGD, cosine LR with linear warm-up, EMA, periodic COCO mAP on the val
split, best-model tracking and resumable checkpoints."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import paddle
from tqdm import tqdm

from sodd.training.dataset import CocoDataset, Sample, batches, load_coco
from sodd.training.ema import ModelEMA
from sodd.training.evaluation import evaluate_coco
from sodd.training.export.nms import multiclass_nms3
from sodd.training.ppyoloe.config import get_config
from sodd.training.ppyoloe.model import PPYOLOE


@dataclass
class TrainConfig:
    dataset: str
    output: str
    model: str = "sodd-SOD-tiny"
    model_overrides: dict = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 8
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 300
    min_lr_ratio: float = 0.05
    ema_decay: float = 0.999
    ema_ramp_steps: float = 300.0
    eval_interval: int = 2
    seed: int = 0
    resume: str | None = None
    max_steps: int | None = None  # stop early (tests, smoke runs)
    threads: int | None = None


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def _optimizer(cfg: TrainConfig, model: paddle.nn.Layer) -> paddle.optimizer.Optimizer:
    # No decay on norms, biases and scalars: they set scale, not capacity.
    decay_names = {p.name for p in model.parameters() if len(p.shape) > 1}
    clip = paddle.nn.ClipGradByGlobalNorm(10.0)
    if cfg.optimizer == "adamw":
        return paddle.optimizer.AdamW(
            cfg.lr, parameters=model.parameters(), weight_decay=cfg.weight_decay,
            apply_decay_param_fun=lambda n: n in decay_names, grad_clip=clip,
        )
    if cfg.optimizer == "sgd":
        return paddle.optimizer.Momentum(
            cfg.lr, momentum=0.9, parameters=model.parameters(), use_nesterov=False,
            weight_decay=paddle.regularizer.L2Decay(cfg.weight_decay), grad_clip=clip,
        )
    raise ValueError(f"unknown optimizer {cfg.optimizer!r} (adamw | sgd)")


@paddle.no_grad()
def evaluate(model: PPYOLOE, data: CocoDataset, batch_size: int = 8) -> dict:
    """COCO metrics of `model` on `data`, boxes mapped back to original pixels as exports do."""
    model.eval()
    cfg = model.cfg
    dets: list[dict] = []
    for batch in batches(data.samples, cfg.input_size, batch_size, None):
        boxes, scores = model.predict_boxes(paddle.to_tensor(batch.images))
        sy, sx = batch.scales[:, :1], batch.scales[:, 1:]
        scale = paddle.to_tensor(np.concatenate([sx, sy, sx, sy], 1)[:, None, :])
        out, nums = multiclass_nms3(boxes / scale, scores, score_threshold=cfg.score_threshold,
                                    nms_top_k=cfg.nms_top_k, keep_top_k=100, nms_threshold=cfg.nms_threshold)
        out, nums = out.numpy(), nums.numpy()
        start = 0
        for s, n in zip(batch.samples, nums, strict=True):
            for c, score, x1, y1, x2, y2 in out[start : start + n]:
                dets.append({"image_id": s.image_id, "category_id": data.category_ids[int(c)],
                             "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                             "score": float(score)})
            start += n
    m = evaluate_coco(data.gt, dets)
    return {"ap": m.ap, "ap50": m.ap50, "ap75": m.ap75, "ap_small": m.ap_small,
            "per_class": dict(m.per_class)}


def _to_batch_tensors(batch) -> tuple[paddle.Tensor, ...]:
    return (paddle.to_tensor(batch.images), paddle.to_tensor(batch.labels), paddle.to_tensor(batch.boxes),
            paddle.to_tensor(batch.mask))


def train(cfg: TrainConfig, log=print) -> dict:
    """Train; writes `last.pdparams` (+ `.pdopt`), `best.pdparams` (EMA weights), `train_state.json`
    and `metrics.jsonl` under cfg.output. Returns the final state."""
    # Optimizer state is keyed by parameter and accumulator names; a fresh name scope makes them the
    # same in a run that resumes as in the run that saved, even within one process.
    with paddle.utils.unique_name.guard():
        return _train(cfg, log)


def _train(cfg: TrainConfig, log) -> dict:
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        paddle.set_num_threads(cfg.threads) if hasattr(paddle, "set_num_threads") else None
    train_set = load_coco(Path(cfg.dataset), "train")
    val_set = load_coco(Path(cfg.dataset), "val", label_list=train_set.label_list)
    if not train_set.samples:
        raise ValueError(f"{train_set.ann_file}: no images")
    overrides = {"num_classes": len(train_set.label_list), **cfg.model_overrides}
    paddle.seed(cfg.seed)
    model = PPYOLOE(get_config(cfg.model, **overrides))
    opt = _optimizer(cfg, model)
    ema = ModelEMA(model, cfg.ema_decay, cfg.ema_ramp_steps)
    steps_per_epoch = math.ceil(len(train_set.samples) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    state = {"epoch": 0, "step": 0, "best_ap": -1.0, "best_epoch": None, "config": asdict(cfg),
             "model_config": model.cfg.to_dict(), "label_list": train_set.label_list}
    if cfg.resume:
        ckpt = paddle.load(str(cfg.resume))
        model.set_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema_state"])
        opt.set_state_dict(paddle.load(str(Path(cfg.resume).with_suffix(".pdopt"))))
        prev = json.loads(Path(cfg.resume).with_name("train_state.json").read_text())
        state.update({k: prev[k] for k in ("epoch", "step", "best_ap", "best_epoch")})
        log(f"resumed from {cfg.resume} at epoch {state['epoch']}, step {state['step']}")
    metrics_file = out / "metrics.jsonl"
    started = time.time()
    step = state["step"]
    for epoch in range(state["epoch"], cfg.epochs):
        if step >= total:
            break
        model.train()
        rng = np.random.default_rng([cfg.seed, epoch])
        bar = tqdm(batches(train_set.samples, model.cfg.input_size, cfg.batch_size, rng),
                   total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", dynamic_ncols=True)
        run_loss = None
        for batch in bar:
            opt.set_lr(lr_at(step, total, cfg))
            images, labels, boxes, mask = _to_batch_tensors(batch)
            losses = model.loss(model(images), labels, boxes, mask)
            losses["loss"].backward()
            opt.step()
            opt.clear_grad()
            ema.update(model)
            step += 1
            val = float(losses["loss"])
            run_loss = val if run_loss is None else 0.95 * run_loss + 0.05 * val
            bar.set_postfix(loss=f"{run_loss:.3f}", cls=f"{float(losses['cls']):.3f}",
                            iou=f"{float(losses['iou']):.3f}", dfl=f"{float(losses['dfl']):.3f}",
                            lr=f"{opt.get_lr():.2e}")
            if step >= total:
                break
        bar.close()
        state.update(epoch=epoch + 1, step=step)
        elapsed = round(time.time() - started, 1)
        record = {"epoch": epoch + 1, "step": step, "loss": run_loss, "elapsed_s": elapsed}
        last = (epoch + 1 == cfg.epochs) or step >= total
        if (epoch + 1) % cfg.eval_interval == 0 or last:
            ema_model = PPYOLOE(model.cfg)
            ema_model.set_state_dict(ema.state)
            m = evaluate(ema_model, val_set, cfg.batch_size)
            record.update({k: m[k] for k in ("ap", "ap50", "ap75", "ap_small")})
            log(f"epoch {epoch + 1}: val mAP {m['ap']:.4f} mAP50 {m['ap50']:.4f} (EMA weights)")
            if m["ap"] > state["best_ap"]:
                state.update(best_ap=m["ap"], best_ap50=m["ap50"], best_epoch=epoch + 1)
                paddle.save({"ema": ema.state, "model_config": model.cfg.to_dict(),
                             "label_list": train_set.label_list}, str(out / "best.pdparams"))
        paddle.save({"model": model.state_dict(), "ema": ema.state, "ema_state": ema.state_dict(),
                     "model_config": model.cfg.to_dict(), "label_list": train_set.label_list},
                    str(out / "last.pdparams"))
        paddle.save(opt.state_dict(), str(out / "last.pdopt"))
        (out / "train_state.json").write_text(json.dumps(state, indent=2))
        with open(metrics_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    state["train_time_s"] = round(time.time() - started, 1)
    (out / "train_state.json").write_text(json.dumps(state, indent=2))
    return state


__all__ = ["TrainConfig", "train", "evaluate", "lr_at", "Sample"]
