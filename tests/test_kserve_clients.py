"""The KServe v2 / Open Inference Protocol (sodd.serving.kserve) as existing clients see it: tritonclient
(grpc) and KServe's InferenceGRPCClient, each in its own process of a cached venv (tritonclient
needs protobuf < 7, which the daemon's environment cannot hold), against a real daemon. Live,
ready, metadata, infer (encoded images and pixels), stream, repository and statistics; the boxes
equal Detect's for the same images and threshold."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from sodd.config.schema import DEFAULT_MODEL_DIR
from sodd.v1 import detector_pb2 as pb
from sodd.v1 import detector_pb2_grpc as pb_grpc
from tests.conftest import Daemon, start_daemon
from tests.fleet_helpers import cached_venv

CLIENTS = ["tritonclient[grpc]==2.73.0", "kserve==0.21.0"]
THRESHOLD = 0.3

TRITON = r'''
import json, queue, sys
import numpy as np
import tritonclient.grpc as tg

address, images, pixels = sys.argv[1], sys.argv[2:-1], sys.argv[-1]
client = tg.InferenceServerClient(address)
out = {"live": client.is_server_live(), "ready": client.is_server_ready(),
       "model_ready": client.is_model_ready("default"),
       "server": client.get_server_metadata(as_json=True),
       "metadata": client.get_model_metadata("default", as_json=True)}

def encoded_input():
    data = np.array([open(p, "rb").read() for p in images], dtype=np.object_)
    tensor = tg.InferInput("images", [len(images)], "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor

def results(result):
    return {name: result.as_numpy(name).tolist() for name in ("boxes", "scores", "class_ids", "num_detections",
                                                              "image_sizes")} | {
        "labels": [[v.decode() for v in row] for row in result.as_numpy("labels")],
        "model": result.get_response().model_name, "version": result.get_response().model_version}

out["infer"] = results(client.infer("default", [encoded_input()], request_id="t1",
                                    parameters={"threshold": __THRESHOLD__}))
rgb = np.load(pixels)
tensor = tg.InferInput("images", list(rgb.shape), "UINT8")
tensor.set_data_from_numpy(rgb)
out["pixels"] = results(client.infer("default", [tensor], parameters={"threshold": "__THRESHOLD__"}))
answers = queue.Queue()
client.start_stream(callback=lambda result, error: answers.put((result, error)))
client.async_stream_infer("default", [encoded_input()], request_id="s1", parameters={"threshold": __THRESHOLD__})
client.async_stream_infer("no-such-model", [encoded_input()], request_id="s2")
first, second = answers.get(timeout=60), answers.get(timeout=60)
client.stop_stream()
out["stream"] = [results(first[0]) if first[1] is None else str(first[1]), str(second[1])]
out["index"] = client.get_model_repository_index(as_json=True)
out["stats"] = client.get_inference_statistics("default", as_json=True)
client.unload_model("default")
out["ready_after_unload"] = client.is_model_ready("default")
client.load_model("default")
out["ready_after_load"] = client.is_model_ready("default")
print(json.dumps(out))
'''.replace("__THRESHOLD__", repr(THRESHOLD))

KSERVE = r'''
import asyncio, json, sys
import grpc
import numpy as np
from kserve import InferenceGRPCClient, InferInput, InferRequest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb, grpc_predict_v2_pb2_grpc as pb_grpc

address, images = sys.argv[1], sys.argv[2:]

async def main():
    out = {}
    async with InferenceGRPCClient(address) as client:
        out["live"] = await client.is_server_live()
        out["ready"] = await client.is_server_ready()
        out["model_ready"] = await client.is_model_ready("default")
        data = np.array([open(p, "rb").read() for p in images], dtype=np.object_)
        tensor = InferInput("images", [len(images)], "BYTES")
        tensor.set_data_from_numpy(data, binary_data=True)
        # KServe's client sends bool, int and str parameters only: a threshold goes as a string.
        request = InferRequest(model_name="default", infer_inputs=[tensor], request_id="k1",
                               parameters={"threshold": str(__THRESHOLD__)})
        response = await client.infer(request)
        out["infer"] = {o.name: (o.as_numpy().tolist() if o.datatype != "BYTES"
                                 else [[v.decode() for v in row] for row in o.as_numpy()])
                        for o in response.outputs}
        out["id"] = response.id
        channel = grpc.aio.insecure_channel(address)  # the same service through plain generated stubs
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name="default"))
        out["metadata"] = {"name": metadata.name, "inputs": [i.name for i in metadata.inputs],
                           "outputs": [o.name for o in metadata.outputs]}
        out["server"] = (await stub.ServerMetadata(pb.ServerMetadataRequest())).name
        await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="default"))
        out["ready_after_unload"] = await client.is_model_ready("default")
        await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="default"))
        out["ready_after_load"] = await client.is_model_ready("default")
        await channel.close()
    print(json.dumps(out))

asyncio.run(main())
'''.replace("__THRESHOLD__", repr(THRESHOLD))


@pytest.fixture(scope="module")
def clients_python() -> Path:
    return cached_venv("oip-clients", CLIENTS) / "python"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(["--model", f"default={DEFAULT_MODEL_DIR}", "--drain-grace", "0"],
                     tmp_path_factory.mktemp("kserve") / "daemon.log", threads=1)
    yield d
    assert d.stop() == 0, d.log()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two generated scenes (the default model's kind of data, so they give boxes) of different
    sizes, so that the outputs are padded."""
    from sodd.datasets.synth.generator import SynthConfig, render_image

    root = tmp_path_factory.mktemp("images")
    paths = []
    for seed, size in ((0, (320, 320)), (1, (360, 480))):
        image, _ = render_image(np.random.default_rng(seed), SynthConfig(image_size=size))
        paths.append(root / f"scene{seed}.png")
        cv2.imwrite(str(paths[-1]), image)
    return paths


def detect_boxes(daemon: Daemon, data: bytes) -> list[tuple]:
    with daemon.channel() as channel:
        response = pb_grpc.DetectorStub(channel).Detect(pb.DetectRequest(image=pb.Image(encoded=data),
                                                                        threshold=THRESHOLD))
    return [(b.cls_id, b.label, b.score, b.xmin, b.ymin, b.xmax, b.ymax) for b in response.boxes]


def tensor_boxes(out: dict, index: int) -> list[tuple]:
    """Image `index`'s rows of the documented outputs, as Detect's boxes (float32 compared exactly)."""
    count = out["num_detections"][index]
    return [(out["class_ids"][index][i], out["labels"][index][i], np.float32(out["scores"][index][i]),
             *(np.float32(v) for v in out["boxes"][index][i])) for i in range(count)]


def as_float32(boxes: list[tuple]) -> list[tuple]:
    return [(c, label, np.float32(s), *(np.float32(v) for v in xyxy)) for c, label, s, *xyxy in boxes]


def run_client(python: Path, script: str, *args: str) -> dict:
    result = subprocess.run([str(python), "-c", script, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_tritonclient(clients_python: Path, daemon: Daemon, images: list[Path], tmp_path: Path) -> None:
    rgb = cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB)
    pixels = tmp_path / "pixels.npy"
    np.save(pixels, rgb[None])
    out = run_client(clients_python, TRITON, daemon.address, *map(str, images), str(pixels))
    assert out["live"] and out["ready"] and out["model_ready"]
    assert out["server"]["name"] == "sodd" and "model_repository" in out["server"]["extensions"]
    assert out["metadata"]["inputs"][0]["name"] == "images"
    assert [o["name"] for o in out["metadata"]["outputs"]] == ["boxes", "scores", "class_ids", "labels",
                                                                "num_detections", "image_sizes"]
    infer = out["infer"]
    assert infer["model"] == "default" and infer["version"] == "1"
    expected = [as_float32(detect_boxes(daemon, p.read_bytes())) for p in images]
    assert all(expected), "the test images must give boxes"
    assert [tensor_boxes(infer, i) for i in range(len(images))] == expected
    assert infer["image_sizes"] == [[320, 320], [360, 480]]
    # Padding past the smaller image's count.
    n = infer["num_detections"]
    short = int(np.argmin(n))
    assert len(infer["boxes"][short]) == max(n) and infer["class_ids"][short][n[short]:] == [-1] * (max(n) - n[short])
    assert tensor_boxes(out["pixels"], 0) == expected[0]  # RGB pixels, threshold as a string
    assert [tensor_boxes(out["stream"][0], i) for i in range(len(images))] == expected
    assert "NOT_FOUND" in out["stream"][1]
    assert {"name": "default", "version": "1", "state": "READY"}.items() <= out["index"]["models"][0].items()
    stats = out["stats"]["model_stats"][0]
    assert int(stats["inference_count"]) >= 5 and int(stats["inference_stats"]["success"]["count"]) >= 3
    assert out["ready_after_unload"] is False and out["ready_after_load"] is True


def test_kserve_inference_grpc_client(clients_python: Path, daemon: Daemon, images: list[Path]) -> None:
    out = run_client(clients_python, KSERVE, daemon.address, *map(str, images))
    assert out["live"] and out["ready"] and out["model_ready"]
    expected = [as_float32(detect_boxes(daemon, p.read_bytes())) for p in images]
    assert [tensor_boxes(out["infer"], i) for i in range(len(images))] == expected
    assert out["id"] == "k1" and out["server"] == "sodd"
    assert out["metadata"]["inputs"] == ["images"] and "boxes" in out["metadata"]["outputs"]
    assert out["ready_after_unload"] is False and out["ready_after_load"] is True
