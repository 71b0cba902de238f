"""`sodd paddlex -c CONFIG.yaml -o Global.mode=MODE -o KEY=VALUE ...`: PaddleX's `main.py` command line.

PaddleX's documentation drives the small-object detection module with

    python main.py -c paddlex/configs/modules/small_object_detection/PP-YOLOE_plus_SOD-S.yaml \\
        -o Global.mode=check_dataset|train|evaluate|predict -o Global.dataset_dir=... -o KEY=VALUE

This command takes the same file and keys and runs the matching sodd command, writing the files
PaddleX writes under Global.output:

  check_dataset  [sodd dataset convert --from labelme|voc], [sodd dataset split], sodd dataset check
                 -> check_dataset_result.json, check_dataset/
  train          sodd train -> best_model/best_model.pdparams, best_model/inference/, train_result.json
  evaluate       sodd evaluate (on best_model/inference beside Evaluate.weight_path, or an export of
                 it) -> evaluate_result.json
  predict        sodd's in-process create_model(...).predict -> <stem>_res.json and <stem>_res.<ext>

The configuration files of the three SOD models are built in: a `-c` path that does not exist but
names one of them (as the documentation's `paddlex/configs/.../PP-YOLOE_plus_SOD-S.yaml` does) uses
the built-in file, and `sodd paddlex --print-config MODEL` writes it out. An unknown key is refused,
naming the key. sodd downloads nothing: pretrained-weight URLs are ignored (training starts from
scratch) and inputs must be local files or URLs this machine can reach.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

MODES = ("check_dataset", "train", "evaluate", "predict")
MODELS = ("PP-YOLOE_plus_SOD-S", "PP-YOLOE_plus_SOD-L", "PP-YOLOE_plus_SOD-largesize-L")
# PaddleX's training defaults per model (epochs_iters, learning_rate, log_interval).
TRAINING = {"PP-YOLOE_plus_SOD-S": (50, 0.01, 10), "PP-YOLOE_plus_SOD-L": (50, 0.01, 10),
            "PP-YOLOE_plus_SOD-largesize-L": (10, 0.00125, 3)}
CONVERT_TYPES = {"labelme": "labelme", "voc": "voc"}


class ConfigKeyError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def default_config(model: str) -> dict[str, Any]:
    """The configuration file of a SOD model, with PaddleX's keys and defaults (no download URLs)."""
    epochs, lr, log_interval = TRAINING[model]
    return {
        "Global": {"model": model, "mode": "check_dataset", "dataset_dir": "dataset", "device": "cpu",
                   "output": "output"},
        "CheckDataset": {"convert": {"enable": False, "src_dataset_type": None},
                         "split": {"enable": False, "train_percent": None, "val_percent": None}},
        "Train": {"num_classes": 10, "epochs_iters": epochs, "batch_size": 2, "learning_rate": lr,
                  "pretrain_weight_path": None, "warmup_steps": 100, "resume_path": None,
                  "log_interval": log_interval, "eval_interval": 1},
        "Evaluate": {"weight_path": "output/best_model/best_model.pdparams", "log_interval": 10},
        "Predict": {"batch_size": 1, "model_dir": "output/best_model/inference", "input": None,
                    "kernel_option": {"run_mode": "paddle"}},
        "Export": {"weight_path": None},
    }


def load_config(path: str) -> dict[str, Any]:
    file = Path(path)
    if file.is_file():
        config = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        if not isinstance(config, dict):
            raise ValueError(f"{path}: not a PaddleX configuration (a YAML mapping)")
        return config
    if file.stem in MODELS:
        print(f"note: {path} does not exist; using sodd's built-in configuration of {file.stem}", file=sys.stderr)
        return default_config(file.stem)
    raise FileNotFoundError(f"{path}: no such configuration file (built in: {', '.join(MODELS)})")


def _schema_has(schema: dict[str, Any], parts: list[str]) -> bool:
    node: Any = schema
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def check_keys(config: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> None:
    """Every key of `config` must be one this command understands."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if not _schema_has(schema, name.split(".")):
            raise ConfigKeyError(f"unknown configuration key {name!r}: sodd paddlex understands "
                                 f"{', '.join(leaf_keys(schema))}")
        if isinstance(value, dict):
            check_keys(value, schema, f"{name}.")


def leaf_keys(schema: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in schema.items():
        out.extend(leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"])
    return out


def apply_override(config: dict[str, Any], schema: dict[str, Any], item: str) -> None:
    """`-o Section.key=VALUE`, VALUE read as YAML (True, 90, null, gpu:0,1), as PaddleX reads it."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"-o {item!r}: expected KEY=VALUE, e.g. -o Global.mode=train")
    parts = key.strip().split(".")
    if not _schema_has(schema, parts) or isinstance(_get(schema, parts), dict):
        raise ConfigKeyError(f"unknown configuration key {key!r}: sodd paddlex understands "
                             f"{', '.join(leaf_keys(schema))}")
    value = yaml.safe_load(raw) if raw.strip() else None
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _get(config: dict[str, Any], parts: list[str]) -> Any:
    node: Any = config
    for part in parts:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def first_device(device: Any) -> str:
    """PaddleX's `gpu:0,1` means cards 0 and 1; sodd runs one device: `gpu:0`."""
    text = str(device or "cpu").strip()
    kind, _, ids = text.partition(":")
    first = ids.split(",")[0].strip()
    return f"{kind}:{first}" if first else kind


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("paddlex", help="PaddleX's `main.py -c CONFIG -o KEY=VALUE` command line",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", help="PaddleX module configuration (YAML), or a built-in model's name")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="set a configuration key, e.g. -o Global.mode=train -o Train.epochs_iters=10")
    parser.add_argument("--print-config", metavar="MODEL", choices=MODELS,
                        help="print the built-in configuration file of MODEL and exit")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.print_config:
        print(yaml.safe_dump(default_config(args.print_config), sort_keys=False), end="")
        return 0
    if not args.config:
        print("sodd paddlex: give -c CONFIG.yaml (or --print-config MODEL)", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
        model = _get(config, ["Global", "model"])
        schema = default_config(model if model in MODELS else MODELS[0])
        schema["Global"]["model"] = model
        check_keys(config, schema)
        config = _merge(schema, config)
        for item in args.override:
            apply_override(config, schema, item)
        mode = config["Global"]["mode"]
        if mode not in MODES:
            raise ValueError(f"Global.mode must be one of {', '.join(MODES)}, got {mode!r}")
        return {"check_dataset": check_dataset, "train": train, "evaluate": evaluate, "predict": predict}[mode](config)
    except (ConfigKeyError, ValueError, FileNotFoundError, yaml.YAMLError) as exc:
        print(f"sodd paddlex: {exc}", file=sys.stderr)
        return 2


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _sodd(argv: list[str]) -> int:
    from sodd.cli import main

    print("+ sodd " + " ".join(argv), file=sys.stderr)
    return main(argv)


def check_dataset(config: dict[str, Any]) -> int:
    g, check = config["Global"], config["CheckDataset"]
    dataset, output = str(g["dataset_dir"]), str(g["output"])
    if check["convert"]["enable"]:
        kind = str(check["convert"]["src_dataset_type"] or "").lower()
        if kind not in CONVERT_TYPES:
            raise ValueError(f"CheckDataset.convert.src_dataset_type must be LabelMe or VOC, got "
                             f"{check['convert']['src_dataset_type']!r}")
        if code := _sodd(["dataset", "convert", "--from", CONVERT_TYPES[kind], dataset]):
            return code
    if check["split"]["enable"]:
        train_percent, val_percent = check["split"]["train_percent"], check["split"]["val_percent"]
        if train_percent is None:
            raise ValueError("CheckDataset.split.train_percent is needed when CheckDataset.split.enable is True")
        if val_percent is None:
            val_percent = 100 - train_percent
        if code := _sodd(["dataset", "split", dataset, "--train-percent", str(train_percent),
                          "--val-percent", str(val_percent)]):
            return code
    return _sodd(["dataset", "check", dataset, "--output", output])


def _set_device(device: Any) -> str:
    import paddle

    chosen = first_device(device)
    if "," in str(device or ""):
        print(f"note: sodd trains on one device; Global.device {device} -> {chosen}", file=sys.stderr)
    paddle.set_device(chosen)
    return chosen


def train(config: dict[str, Any]) -> int:
    g, t = config["Global"], config["Train"]
    output = Path(str(g["output"]))
    if t.get("pretrain_weight_path"):
        print(f"note: Train.pretrain_weight_path {t['pretrain_weight_path']} is not used: sodd does not download "
              "weights and trains from scratch", file=sys.stderr)
    _check_num_classes(Path(str(g["dataset_dir"])), t.get("num_classes"))
    _set_device(g.get("device"))
    argv = ["train", "--dataset", str(g["dataset_dir"]), "--output", str(output), "--config", str(g["model"]),
            "--set", f"epochs={int(t['epochs_iters'])}", "--set", f"batch_size={int(t['batch_size'])}",
            "--set", f"lr={float(t['learning_rate'])}", "--set", f"warmup_steps={int(t['warmup_steps'])}",
            "--set", f"eval_interval={int(t['eval_interval'])}"]
    if t.get("resume_path"):
        argv += ["--resume", str(t["resume_path"])]
    if code := _sodd(argv):
        return code
    # PaddleX's layout: best_model/best_model.pdparams beside its inference directory.
    best = output / "best.pdparams"
    if not best.is_file():
        best = output / "last.pdparams"
    best_dir = output / "best_model"
    best_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, best_dir / "best_model.pdparams")
    if code := _sodd(["export", "--config", str(g["model"]), "--weights", str(best_dir / "best_model.pdparams"),
                      "--output", str(best_dir / "inference")]):
        return code
    state = json.loads((output / "train_state.json").read_text())
    result = {"model_name": g["model"], "done_flag": True,
              "models": {"best": {"score": state.get("best_ap"), "pdparams": "best_model/best_model.pdparams",
                                  "inference_config": "best_model/inference/inference.yml",
                                  "pdiparams": "best_model/inference/inference.pdiparams"}},
              "train_log": "metrics.jsonl"}
    (output / "train_result.json").write_text(json.dumps(result, indent=4, ensure_ascii=False), encoding="utf-8")
    print(f"train_result.json written to {output}")
    return 0


def _check_num_classes(dataset: Path, num_classes: Any) -> None:
    annotation = dataset / "annotations" / "instance_train.json"
    if num_classes is None or not annotation.is_file():
        return
    found = len(json.loads(annotation.read_text(encoding="utf-8")).get("categories", []))
    if int(num_classes) != found:
        raise ValueError(f"Train.num_classes is {num_classes} but {annotation} has {found} categories")


def evaluate(config: dict[str, Any]) -> int:
    g, e = config["Global"], config["Evaluate"]
    weights = str(e["weight_path"] or "")
    if weights.startswith(("http://", "https://")):
        raise ValueError(f"Evaluate.weight_path {weights} is a URL: sodd does not download weights")
    weights_path = Path(weights)
    model_dir = weights_path.parent / "inference"
    if weights_path.is_dir():
        model_dir = weights_path  # an inference directory given directly
    elif not (model_dir / "inference.yml").is_file():
        if not weights_path.is_file():
            raise FileNotFoundError(f"Evaluate.weight_path {weights}: no such file")
        model_dir = Path(str(g["output"])) / "evaluate_model"
        if code := _sodd(["export", "--config", str(g["model"]), "--weights", str(weights_path),
                          "--output", str(model_dir)]):
            return code
    return _sodd(["evaluate", "--dataset", str(g["dataset_dir"]), "--model", str(model_dir), "--device",
                  first_device(g.get("device")), "--output", str(g["output"]), "--no-progress"])


def predict(config: dict[str, Any]) -> int:
    from sodd.paddlex_api import create_model

    g, p = config["Global"], config["Predict"]
    if p.get("input") is None:
        raise ValueError("Predict.input is needed: -o Predict.input=IMAGE|DIRECTORY|URL")
    run_mode = (p.get("kernel_option") or {}).get("run_mode", "paddle")
    if run_mode not in ("paddle", None):
        raise ValueError(f"Predict.kernel_option.run_mode {run_mode!r}: sodd runs 'paddle' here; choose another "
                         "backend with the device string, e.g. -o Global.device='gpu:0?mode=trt_fp16'")
    output = str(g["output"])
    with create_model(model_dir=str(p["model_dir"]), device=first_device(g.get("device"))) as model:
        for res in model.predict(p["input"], batch_size=int(p.get("batch_size") or 1)):
            res.print()
            res.save_to_img(output)
            res.save_to_json(output)
    return 0
