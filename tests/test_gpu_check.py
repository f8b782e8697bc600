"""benchmarks/gpu_check.py, the prepared GPU check, run on CPU with tiny data (--quick):
its JSON carries every step with its time, its recorded CPU figure and the device's
name; a failing step makes the run exit 1; a missing GPU is one line, exit 2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _driver():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _check_schema(result: dict, steps: set[str]) -> None:
    assert result["device"] == "cpu" and result["quick"] is True and result["ok"] is True
    assert isinstance(result["device_name"], str) and result["device_name"]
    assert result["total_s"] > 0 and result["machine"]["torch"] == torch.__version__
    assert {r["step"] for r in result["steps"]} == steps
    for r in result["steps"]:
        assert r["ok"] and r["error"] is None and r["seconds"] > 0, r
        assert r["cpu_seconds"] > 0 and r["cpu_source"].startswith("benchmarks/results/"), r
        assert r["cpu_over_device"] is None  # quick timings are not compared with the CPU figures


def test_quick_run_on_cpu_writes_the_json(tmp_path):
    gc = _driver()
    steps = {"lenet5_train", "bwn_epoch", "xnor_epoch", "ptq_calibration"}
    out = tmp_path / "gpu_check.json"
    rc = gc.main(["--device", "cpu", "--quick", "--json", str(out), "--work", str(tmp_path / "w"),
                  "--only", ",".join(sorted(steps))])
    assert rc == 0
    _check_schema(json.loads(out.read_text()), steps)


@pytest.mark.slow
def test_quick_run_of_every_step(tmp_path):
    gc = _driver()
    out = tmp_path / "gpu_check.json"
    assert gc.main(["--device", "cpu", "--quick", "--json", str(out), "--work", str(tmp_path / "w")]) == 0
    result = json.loads(out.read_text())
    _check_schema(result, set(gc.STEPS))
    own = next(r for r in result["steps"] if r["step"] == "own_model_compress")
    assert own["ratio"] > 1


def test_every_step_has_its_recorded_cpu_figure():
    gc = _driver()
    for step in gc.STEPS:
        seconds, source = gc.cpu_figure(step)
        assert seconds is not None and seconds > 0, source


def test_a_failing_step_fails_the_run(tmp_path, capsys):
    """ptq_calibration alone has no LeNet-5 checkpoint to calibrate: the step is recorded
    as failed, with its error, and the run exits 1."""
    gc = _driver()
    out = tmp_path / "gpu_check.json"
    rc = gc.main(["--device", "cpu", "--quick", "--json", str(out), "--work", str(tmp_path / "w"),
                  "--only", "ptq_calibration"])
    assert rc == 1
    result = json.loads(out.read_text())
    assert result["ok"] is False
    (row,) = result["steps"]
    assert row["ok"] is False and row["seconds"] is None and "no LeNet-5 checkpoint" in row["error"]
    assert "FAILED: ptq_calibration" in capsys.readouterr().err


def test_unknown_step_is_refused(capsys):
    assert _driver().main(["--device", "cpu", "--quick", "--only", "lenet5_trian"]) == 2
    assert "unknown step(s) lenet5_trian" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_no_gpu_is_one_line(capsys):
    assert _driver().main(["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "gpu_check: device 'cuda' asked for, but no CUDA device is available here"
