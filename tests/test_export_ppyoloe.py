"""An exported PP-YOLOE+ SOD directory gives the dygraph model's boxes, in both program formats."""

import numpy as np
import paddle
import pytest
import yaml

from sodd.training.ppyoloe.export import export_model
from sodd.training.ppyoloe.model import build_inference, build_model

SMALL = {"input_size": 128, "num_classes": 6}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A checkpoint whose heads are perturbed (fresh heads predict nothing), and its export."""
    root = tmp_path_factory.mktemp("export")
    paddle.seed(1)
    model = build_model("sodd-SOD-tiny", SMALL)
    state = model.state_dict()
    rng = np.random.default_rng(0)
    for k, v in state.items():
        if k.startswith("head.pred_"):
            v.set_value(rng.normal(0, 0.05, v.shape).astype("float32") + (0.5 if k.endswith("bias") else 0))
    ckpt = root / "ckpt.pdparams"
    paddle.save({"ema": state, "model_config": model.cfg.to_dict(),
                 "label_list": ["a", "b", "c", "d", "e", "f"]}, str(ckpt))
    out = root / "model"
    export_model("sodd-SOD-tiny", out, ckpt)
    return ckpt, out


def _infer(model_dir, program, image, scale):
    from paddle import inference

    cfg = inference.Config(str(model_dir / program), str(model_dir / "inference.pdiparams"))
    cfg.disable_gpu()
    cfg.disable_mkldnn()
    predictor = inference.create_predictor(cfg)
    for name, value in zip(predictor.get_input_names(), (image, scale), strict=True):
        predictor.get_input_handle(name).copy_from_cpu(value)
    predictor.run()
    return [predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names()]


@pytest.mark.parametrize("program", ["inference.json", "inference.pdmodel"])
def test_exported_equals_dygraph(exported, program):
    ckpt, out = exported
    rng = np.random.default_rng(5)
    image = rng.uniform(0, 255, (2, 3, 128, 128)).astype("float32")
    scale = np.array([[0.5, 0.25], [1.0, 2.0]], np.float32)
    net = build_inference("sodd-SOD-tiny", SMALL, str(ckpt))
    boxes, nums = (t.numpy() for t in net(paddle.to_tensor(image), paddle.to_tensor(scale)))
    got_boxes, got_nums = _infer(out, program, image, scale)
    assert nums.sum() > 0
    np.testing.assert_array_equal(got_nums, nums)
    np.testing.assert_allclose(got_boxes, boxes, atol=1e-4, rtol=1e-5)


def test_inference_yml(exported):
    _, out = exported
    yml = yaml.safe_load((out / "inference.yml").read_text())
    assert yml["Global"]["model_name"] == "PP-YOLOE_plus_SOD-S"
    assert yml["label_list"] == ["a", "b", "c", "d", "e", "f"]
    assert yml["Preprocess"][0]["target_size"] == [128, 128]
    assert "NormalizeImage" not in [op["type"] for op in yml["Preprocess"]]
    assert yml["sodd"]["config"] == "sodd-SOD-tiny"


def test_legacy_program_avoids_paddle_lite_traps(exported):
    from paddle.base.proto import framework_pb2

    _, out = exported
    desc = framework_pb2.ProgramDesc.FromString((out / "inference.pdmodel").read_bytes())
    ops = {op.type for block in desc.blocks for op in block.ops}
    assert "multiclass_nms3" in ops
    assert not ops & {"flatten_contiguous_range", "assign_value"}
