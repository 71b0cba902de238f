"""`sodd bench` keeps working: one short run on the tiny model, no timing assertions.

The numbers in docs/benchmarks.md come from long runs on real models; here only the report's
shape, the section handling of the docs file and "no request lost" are checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from sodd_client.bench import percentile

from sodd.tools.bench.plain import PlainSetup
from sodd.tools.bench.report import targets, write_section
from sodd.tools.bench.runner import ROUND_REQUESTS_PER_CLIENT, ThroughputRounds
from sodd.tools.bench.stats import Measurement
from tests.conftest import REPO, Daemon, paddlex_python


@pytest.fixture(scope="module")
def bench_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "scene.jpg"
    rng = np.random.default_rng(3)
    cv2.imwrite(str(path), rng.integers(0, 255, (90, 160, 3), dtype=np.uint8))
    return path


def run_bench(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sodd.cli", "bench", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600, env={**os.environ, **(env or {})})


def by_system(report: dict, system: str) -> list[dict]:
    return [m for m in report["measurements"] if m["system"] == system]


def test_bench_against_a_started_daemon(tiny_model_dirs: dict[str, Path], bench_image: Path, tmp_path: Path) -> None:
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir()
    doc.write_text("# Benchmarks\n\n## GPU notes\n\nkept as written\n")
    out = tmp_path / "run.json"
    result = run_bench(["--model-dir", str(tiny_model_dirs["both"]), "--image", str(bench_image), "--start",
                        "--variant", "defaults=", "--variant", "one-by-one=--max-batch-size 1",
                        "--concurrency", "1,3", "--sizes", "160x90,96x64", "--requests", "5", "--warmup", "1",
                        "--plain-setups", "1x1,2x1,1x1b2", "--no-paddlex-predict", "--no-paddlex-serving",
                        "--name", "tiny", "--doc", str(doc), "--json", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())

    sodd = by_system(report, "sodd")
    assert sorted((m["setup"], m["size"], m["concurrency"]) for m in sodd) == sorted(
        (v, s, c) for v in ("defaults", "one-by-one") for s in ("160x90", "96x64") for c in (1, 3))
    assert report["settings"]["variants"] == {"defaults": [], "one-by-one": ["--max-batch-size", "1"]}
    for m in sodd:
        assert m["requests"] == 5 and m["ok"] == 5 and m["lost"] == 0 and m["errors"] == {}
        assert m["throughput"] > 0 and 0 < m["p50"] <= m["p90"] <= m["p99"]
        assert set(m["stages"]) == {"decode", "preprocess", "queue", "inference", "postprocess"}
        assert m["stages"]["inference"] > 0
    plain = by_system(report, "plain")
    assert sorted({m["setup"] for m in plain}) == ["1x1", "1x1b2", "2x1"]
    assert all(m["ok"] == 5 for m in plain)
    assert set(report["skipped"]) == set()  # both PaddleX baselines were switched off, not missing
    assert not by_system(report, "paddlex-predict") and not by_system(report, "paddlex-serving")
    assert report["machine"]["cores"] >= 1 and report["machine"]["paddle"]
    assert report["model"]["model_name"] == "PP-YOLOE_plus_SOD-S"

    by_name = {(t["size"], t["variant"], t["name"]): t for t in report["targets"]}
    assert len(by_name) == 2 * 2 * 4
    latency = by_name[("160x90", "one-by-one", "1 client: sodd p50 / plain per-image time")]
    assert latency["measured"] > 0 and latency["reached"] in (True, False)
    assert by_name[("160x90", "defaults", "8 clients: sodd / PaddleX serving images/s")]["reached"] is None
    assert by_name[("96x64", "defaults", "sodd lost requests (all concurrencies)")]["reached"] is True

    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\n## GPU notes\n\nkept as written\n")
    assert text.count("<!-- sodd-bench:tiny begin") == 1 and "| 96x64 | one-by-one | 3 |" in text
    assert (doc.parent / "img" / "bench-tiny.png").stat().st_size > 0
    assert "![tiny: throughput and latency against concurrency](img/bench-tiny.png)" in text


def test_bench_paddlex_baselines(tiny_model_dirs: dict[str, Path], bench_image: Path, tmp_path: Path) -> None:
    python = paddlex_python()
    out = tmp_path / "run.json"
    result = run_bench(["--model-dir", str(tiny_model_dirs["both"]), "--image", str(bench_image),
                        "--concurrency", "1,2", "--rounds", "2", "--requests", "4", "--warmup", "1",
                        "--plain-setups", "", "--json", str(out)], env={"SODD_PADDLEX_PYTHON": python})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["versions"]["paddlex"] == "3.7.2"
    assert sorted(m["concurrency"] for m in by_system(report, "sodd")) == [1, 2]
    assert sorted(m["concurrency"] for m in by_system(report, "paddlex-serving")) == [1, 2]
    (predict,) = by_system(report, "paddlex-predict")  # measured in the rounds, not again on its own
    for m in [*by_system(report, "sodd"), predict, *by_system(report, "paddlex-serving")]:
        assert m["ok"] == 4 and m["lost"] == 0, m
    # One client: sodd and PaddleX's predict alternated in 2 rounds of 2 requests, a ratio per round.
    (rounds,) = report["interleaved"]
    assert len(rounds["sodd_p50"]) == len(rounds["paddlex_predict_p50"]) == len(rounds["ratios"]) == 2
    (target,) = [t for t in report["targets"] if "interleaved" in t["name"]]
    assert target["measured"] > 0 and "median of 2 rounds" in target["basis"]
    assert "alternating rounds" in result.stdout


def test_bench_interleaves_the_plain_loops_at_eight_clients(tiny_model_dirs: dict[str, Path], bench_image: Path,
                                                           tmp_path: Path) -> None:
    """The 8-client comparison with the plain loops alternates with them in rounds, as the one-client
    comparison with PaddleX's predict does, so a drift of the machine's load hits both."""
    out = tmp_path / "run.json"
    result = run_bench(["--model-dir", str(tiny_model_dirs["both"]), "--image", str(bench_image),
                        "--concurrency", "8", "--rounds", "2", "--requests", "4", "--warmup", "1",
                        "--plain-setups", "1x1,2x1", "--no-paddlex-predict", "--no-paddlex-serving",
                        "--json", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    per_round = ROUND_REQUESTS_PER_CLIENT * 8  # --requests 4 is too few for a throughput round
    (rounds,) = report["throughput_rounds"]
    assert rounds["clients"] == 8 and len(rounds["sodd"]) == 2 and len(rounds["ratios"]) == 2
    assert sorted(rounds["plain"]) == ["1x1", "2x1"] and all(len(r) == 2 for r in rounds["plain"].values())
    plain = by_system(report, "plain")  # measured in the rounds, not again on their own
    assert sorted(m["setup"] for m in plain) == ["1x1", "2x1"]
    for m in [*plain, *by_system(report, "sodd")]:
        assert m["requests"] == m["ok"] == 2 * per_round, m
    (target,) = [t for t in report["targets"] if t["name"] == "8 clients: sodd / best plain images/s"]
    assert target["measured"] > 0 and "median of 2 interleaved rounds" in target["basis"]
    assert "Many clients, sodd over gRPC and the plain loops in alternating rounds" in result.stdout


def test_interleaved_rounds_compare_with_each_rounds_best_plain_setup() -> None:
    rounds = ThroughputRounds("640x360", "", 8, [10.0, 9.0, 12.0], {"1x2": [8.0, 12.0, 10.0], "2x1": [11.0, 9.0, 10.0]})
    assert rounds.best_plain == [11.0, 12.0, 10.0]
    assert rounds.ratios == pytest.approx([10 / 11, 9 / 12, 1.2])
    assert rounds.ratio == pytest.approx(10 / 11)
    ms = [Measurement("sodd", "", "640x360", 8, 10, 10, 1.0, [0.1] * 10)]
    (target,) = [t for t in targets(ms, [rounds]) if t.name == "8 clients: sodd / best plain images/s"]
    assert target.measured == pytest.approx(10 / 11) and target.reached is False
    assert target.basis.startswith("median of 3 interleaved rounds, 0.75 to 1.20")


def test_bench_reports_a_missing_paddlex_environment(tiny_model_dirs: dict[str, Path], bench_image: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    result = run_bench(["--model-dir", str(tiny_model_dirs["both"]), "--image", str(bench_image),
                        "--concurrency", "1", "--requests", "2", "--warmup", "0", "--plain-setups", "",
                        "--paddlex-python", str(tmp_path / "nowhere" / "python"), "--json", str(out)],
                       env={"SODD_PADDLEX_PYTHON": str(tmp_path / "missing")})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["skipped"]) == {"paddlex-predict", "paddlex-serving"}
    assert by_system(report, "sodd")[0]["lost"] == 0


def test_bench_refuses_bad_options(tiny_model_dirs: dict[str, Path], bench_image: Path, tmp_path: Path) -> None:
    base = ["--model-dir", str(tiny_model_dirs["both"]), "--image", str(bench_image)]
    for extra, message in ((["--sizes", "640by360"], "WIDTHxHEIGHT"), (["--plain-setups", "2y1"], "PREDICTORS"),
                           (["--requests", "0"], "--requests"), (["--variant", "no-equals"], "NAME=ARGS"),
                           (["--variant", "a=", "--variant", "a=--threads 1"], "twice"),
                           (["--address", "127.0.0.1:1", "--variant", "a="], "--address")):
        result = run_bench(base + extra)
        assert result.returncode == 2 and message in result.stderr, result.stderr
    result = run_bench(["--model-dir", str(tmp_path), "--image", str(bench_image)])
    assert result.returncode == 2 and "sodd bench:" in result.stderr


def test_plain_setup_names_round_trip() -> None:
    for text in ("1x2", "2x1", "1x2b4"):
        assert PlainSetup.parse(text).name == text
    with pytest.raises(ValueError):
        PlainSetup.parse("0x2")


def test_client_percentile_matches_numpy() -> None:
    values = [0.3, 0.1, 0.7, 0.2, 0.9, 0.4]
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_targets_use_the_best_plain_setups() -> None:
    def m(system: str, setup: str, c: int, latency: float, seconds: float, ok: int = 10) -> Measurement:
        return Measurement(system, setup, "640x360", c, 10, ok, seconds, [latency] * ok)

    ms = [m("plain", "1x2", 1, 0.100, 1.0), m("plain", "2x1", 2, 0.150, 0.8), m("sodd", "", 1, 0.105, 1.05),
          m("sodd", "", 8, 0.6, 0.82), m("paddlex-serving", "", 8, 0.9, 1.2)]
    got = {t.name: t for t in targets(ms)}
    assert got["1 client: sodd p50 / plain per-image time"].measured == pytest.approx(1.05)
    assert got["1 client: sodd p50 / plain per-image time"].basis == "plain 1x2 p50"
    assert got["8 clients: sodd / PaddleX serving images/s"].measured == pytest.approx(1.2 / 0.82)
    assert got["8 clients: sodd / best plain images/s"].measured == pytest.approx(0.8 / 0.82)
    assert got["8 clients: sodd / best plain images/s"].reached is True
    ms.append(m("sodd", "", 16, 1.0, 2.0, ok=9))
    assert {t.name: t for t in targets(ms)}["sodd lost requests (all concurrencies)"].reached is False


def test_write_section_replaces_only_its_own(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    write_section(doc, "a", "first a\n")
    write_section(doc, "b", "only b\n")
    doc.write_text(doc.read_text() + "\n## Notes by hand\n")
    write_section(doc, "a", "second a\n")
    text = doc.read_text()
    assert "first a" not in text and text.count("second a") == 1 and "only b" in text
    assert text.index("second a") < text.index("only b") < text.index("## Notes by hand")


def test_client_load_generator_on_its_own(tiny_daemon: Daemon, bench_image: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "sodd_client.bench", "--server", tiny_daemon.address,
                             "--model", "tiny", "--concurrency", "2", "--requests", "6", "--warmup", "2",
                             str(bench_image)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["ok"] == 6 and summary["lost"] == 0 and summary["errors"] == {}
    assert 0 < summary["p50"] <= summary["p99"] and summary["throughput"] > 0
    assert summary["server_stage_means"]["inference"] > 0
