"""Steps that run in a child process: paddle2onnx conversion, and cutting a graph before its NMS.

    python -m hw_plugins.onnx_common.tool convert OUT OPSET CUT MODEL_FILE PARAMS_FILE
    python -m hw_plugins.onnx_common.tool cut OUT OPSET CUT ONNX_FILE

CUT is 1 to stop the graph at the inputs of its NonMaxSuppression (boxes, scores), 0 to keep it. A
graph without NMS and with two outputs is taken to end at boxes and scores already.
"""

from __future__ import annotations

import os
import sys
import tempfile


def convert(model_file: str, params_file: str, out: str, opset: int) -> None:
    import paddle2onnx

    paddle2onnx.export(model_file, params_file, out, opset_version=opset, enable_onnx_checker=True)


def cut_before_nms(src: str, out: str) -> None:
    """Make the graph's outputs the NMS inputs (boxes [B, M, 4], scores [B, C, M]); drop what follows."""
    import onnx

    model = onnx.load(src)
    graph = model.graph
    nms = [n for n in graph.node if n.op_type == "NonMaxSuppression"]
    if not nms and len(graph.output) == 2:
        onnx.save(model, out)  # already ends at boxes and scores (a graph exported without NMS)
        return
    if len(nms) != 1:
        raise SystemExit(f"expected one NonMaxSuppression node in {src}, found {len(nms)}")
    boxes, scores = nms[0].input[0], nms[0].input[1]
    needed, kept = {boxes, scores}, []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    del graph.output[:]
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    graph.output.extend([inferred.get(name) or onnx.helper.make_tensor_value_info(
        name, onnx.TensorProto.FLOAT, [f"{name}_{axis}" for axis in range(3)]) for name in (boxes, scores)])
    used = {i for n in kept for i in n.input}
    initializers = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    onnx.checker.check_model(model)
    onnx.save(model, out)


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[0] not in ("convert", "cut"):
        print(__doc__, file=sys.stderr)
        return 2
    command, out, opset, cut = argv[0], argv[1], int(argv[2]), argv[3] == "1"
    if command == "convert":
        if len(argv) != 6:
            print(__doc__, file=sys.stderr)
            return 2
        full = out if not cut else tempfile.mktemp(suffix=".onnx", dir=os.path.dirname(out))
        convert(argv[4], argv[5], full, opset)
    else:
        full = argv[4]
    if cut:
        cut_before_nms(full, out)
    elif full != out:
        os.replace(full, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
