"""benchmarks/gpu.sh, issue 18's one-shot device measurement, checked here so that a lent GPU's few minutes are not
spent on a renamed option or a lost file: every `raylab bench` line it runs parses and validates as the CLI would, its
time limits fit the device call, its pytest selection still selects the GPU-only tests, and what it measured comes
back as one archive (the device tool returns at most 8 files)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from raylab.bench import BenchConfig, EngineBenchConfig
from raylab.cli import _parser
from raylab.options import build

from .conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu.sh"
DEVICE_CALL_S = 580  # the `run` timeout the script's header names; its own limits must leave time to start
GPU_ONLY_TESTS = 7  # nvJPEG, 2 CUDA-graph UAPs, 2 overlapped copies, 1 staged batch, 1 training resumed on CUDA: what
# the CPU suite skips
FILES_BACK = 8  # the most files the device tool returns from $OUT


def _lines() -> list[str]:
    text = SCRIPT.read_text().replace("\\\n", " ")
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _words(line: str, name: str = "") -> list[str]:
    line = line.split(" > ")[0].replace("${DATA:-shared/data}", "shared/data").replace("$W/", "out/")
    return shlex.split(line.replace("$name", name))


def bench_runs() -> list[tuple[str, int, list[str]]]:
    """(name, time limit, raylab's argv) for every bench the script runs, through its `bench` helper or directly."""
    lines = _lines()
    template = next(ln for ln in lines if "-m raylab bench" in ln and '"$@"' in ln)
    runs = []
    for ln in lines:
        if ln.startswith("bench "):
            _, name, limit, *args = shlex.split(ln)
            words = _words(template, name)
            at = words.index("$@")
            words[at:at + 1] = args
            runs.append((name, int(limit), words[words.index("raylab") + 1:]))
        elif re.match(r"timeout \d+ \$PY -m raylab ", ln):
            words = _words(ln)
            out = words[words.index("--out") + 1]
            runs.append((Path(out).stem, int(words[1]), words[words.index("raylab") + 1:]))
    return runs


def test_the_script_is_valid_bash() -> None:
    for script in (SCRIPT, SCRIPT.with_name("gpu_prepare.sh")):
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, f"{script.name}: {done.stderr}"


@pytest.mark.parametrize("run", bench_runs(), ids=lambda r: r[0])
def test_every_bench_line_parses_and_validates(run) -> None:
    name, _, argv = run
    try:
        args = _parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"gpu.sh's {name}: raylab refuses its options: {' '.join(argv)}")
    config = build(EngineBenchConfig if args.engine else BenchConfig, args)  # the configs' own checks, as the CLI
    assert config.device == "cuda" and args.out == Path("out") / f"{name}.json"


def test_the_runs_are_the_measurement_issue_18_asks_for() -> None:
    runs = {name: argv for name, _, argv in bench_runs()}
    archs = {argv[argv.index("--arch") + 1] for argv in runs.values()}
    assert archs == {"inception_v3", "resnet50", "vgg16"}
    assert sum("--engine" in argv for argv in runs.values()) == 1
    assert any("--compile" in argv for argv in runs.values())
    assert all("--peak-tflops" in argv for argv in runs.values() if "--engine" not in argv)


def test_the_time_limits_fit_one_device_call() -> None:
    limits = [limit for _, limit, _ in bench_runs()]
    limits += [int(m) for m in re.findall(r"timeout (\d+) \$PY -m pytest", SCRIPT.read_text())]
    assert len(limits) == len(bench_runs()) + 1
    assert sum(limits) <= DEVICE_CALL_S - 10, f"gpu.sh's limits add up to {sum(limits)} s"


def test_its_pytest_selection_selects_the_gpu_only_tests() -> None:
    line = next(ln for ln in _lines() if "-m pytest" in ln)
    words = shlex.split(line.split(" > ")[0])
    select = words[words.index("-k") + 1]
    paths = [w for w in words if w.startswith("tests/")]
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *paths,
                           "-k", select], cwd=ROOT, capture_output=True, text=True)
    collected = [ln for ln in done.stdout.splitlines() if "::" in ln]
    assert done.returncode == 0 and len(collected) >= GPU_ONLY_TESTS, done.stdout[-2000:]
    assert any("test_train.py::" in ln and "[cuda]" in ln for ln in collected) and not any("[cpu]" in ln for ln in collected)


# Stands in for the device's python3 in the glue test below: each `raylab bench --out F` writes a figure to F, pytest
# prints a summary line, every other call succeeds (the real command lines are checked by the parse test above).
STAND_IN = """#!/bin/bash
if [ "$1 $2" = "-m raylab" ]; then
  while [ $# -gt 0 ]; do [ "$1" = --out ] && printf '{"batched_images_per_s": 1.0}' > "$2"; shift; done
elif [ "$1 $2" = "-m pytest" ]; then echo "6 passed"; fi
exit 0
"""


def test_what_it_measures_comes_back_as_one_archive(tmp_path) -> None:
    writes = re.findall(r'"\$OUT/([^"]+)"', SCRIPT.read_text())
    assert writes and all(w.startswith("gpu-bench.") for w in writes), writes
    py = tmp_path / "python3"
    py.write_text(STAND_IN)
    py.chmod(0o755)
    out, work = tmp_path / "out", tmp_path / "work"
    done = subprocess.run(["bash", str(SCRIPT)], env={"PATH": "/usr/bin:/bin", "OUT": str(out), "WORK": str(work),
                                                      "PYTHON": str(py)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    back = [f for f in out.iterdir() if f.is_file()]
    assert [f.name for f in back] == ["gpu-bench.tar.gz"] and len(back) <= FILES_BACK
    with tarfile.open(out / "gpu-bench.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    for name, _, _ in bench_runs():
        assert {f"{name}.json", f"{name}.log"} <= names, name
    assert {"gpu-machine.txt", "gpu-only-tests.log"} <= names
    assert "GPU-only tests: 6 passed" in done.stdout
