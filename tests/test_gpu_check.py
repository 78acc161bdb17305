"""The GPU check's logic, tested on the CPU: tolerances per kind of claim, and a clear stop without CUDA."""
from pathlib import Path

import pytest
import torch

from tools import gpu_check


def row(claim, ours, unit=None):
    return {"claim": claim, "ours": ours, "unit": unit}


def test_counts_must_agree_exactly_and_trained_numbers_get_room():
    assert gpu_check.tolerance_for(row("Lite0 parameters", 4.65, "M"))[0] == "count"
    assert gpu_check.tolerance_for(row("cat-vs-dog accuracy, fine-tuned GAP model", 91.0, "%")) == ("trained", 5.0)
    assert gpu_check.tolerance_for(row("pixel AUROC, mean of categories", 0.95)) == ("measured", 0.02)


def test_compare_reports_drift_missing_and_extra_claims():
    cpu = [row("Lite0 parameters", 4.652, "M"), row("pixel AUROC", 0.950), row("only on cpu", 1.0)]
    gpu = [row("Lite0 parameters", 4.652, "M"), row("pixel AUROC", 0.990), row("only on gpu", 1.0)]
    problems = gpu_check.compare(cpu, gpu)
    assert len(problems) == 3
    assert any("'pixel AUROC' (measured)" in p and "> 0.02" in p for p in problems)
    assert any("'only on cpu'" in p and "not on GPU" in p for p in problems)
    assert any("'only on gpu'" in p for p in problems)
    assert gpu_check.compare(cpu, [row("Lite0 parameters", 4.652, "M"), row("pixel AUROC", 0.955),
                                   row("only on cpu", 1.0)]) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_stops_with_one_clear_message_without_cuda():
    with pytest.raises(SystemExit, match="gpu-check needs a CUDA GPU"):
        gpu_check.main(["--no-nbval", "--no-smoke"])


def recording_notebook(path, value_expression):
    """A chapter-like notebook that records one claim with results.record(run=RUN)."""
    import nbformat

    root = gpu_check.ROOT
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('PROFILE = "tiny"\nSEED = 0\nDEVICE = "auto"\nDATA_DIR = None\nSMOKE = False')
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        f"import sys\nsys.path.insert(0, {str(root)!r})\nfrom utils import config, results\n"
        "RUN = config.start_run(PROFILE, SEED, DEVICE, DATA_DIR, SMOKE)\n"
        f"results.record({path.stem!r}, 'pixel AUROC of a fixed map', {value_expression}, unit='%', run=RUN)")
    nb.cells = [params, body]
    nbformat.write(nb, path)


@pytest.mark.parametrize("value, ok, jobs", [("91.0", True, 2), ("99.0", False, 1)])
def test_rehearsal_on_cpu_compares_recorded_numbers_with_the_committed_ones(tmp_path, monkeypatch, capsys,
                                                                            value, ok, jobs):
    import json

    committed = tmp_path / "committed"
    committed.mkdir()
    notebooks = [tmp_path / "98_rehearsal.ipynb", tmp_path / "97_other.ipynb"][:jobs]
    for nb in notebooks:
        (committed / f"{nb.stem}.tiny.json").write_text(json.dumps(
            [{"claim": "pixel AUROC of a fixed map", "ours": 91.0, "unit": "%"}]))
        recording_notebook(nb, value)
    monkeypatch.setattr(gpu_check, "COMMITTED_RESULTS", committed)
    out_dir = tmp_path / "out"
    code = gpu_check.main(["--device", "cpu", "--no-nbval", "--no-smoke", "--jobs", str(jobs),
                           "--output", str(out_dir), *map(str, notebooks)])
    out, err = capsys.readouterr()
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["nbval_lax"] == "skipped" and summary["jobs"] == jobs
    row = summary["chapters"]["98_rehearsal"]
    assert row["claims_compared"] == 1 and row["claims_outside"] == (0 if ok else 1)
    assert row["smoke_ok"] is None and row["tiny_ok"]
    assert "98_rehearsal" in out and "skipped" in out            # the summary table
    assert (code == 0) == ok
    if not ok:
        assert "GPU CHECK FAILURE: 98_rehearsal: 'pixel AUROC of a fixed map' (measured)" in err


def test_percentage_points_get_percentage_tolerances():
    gain = row("mAP gain of training with BoostLU over LL-R", 0.0047, "points")
    assert gpu_check.tolerance_for(gain) == ("trained", 5.0)
    # the drift TF32 caused on an H200 (0.0047 -> 0.111 points) is rounding, not a failed claim
    assert gpu_check.compare([gain], [{**gain, "ours": 0.111}]) == []


def test_chapters_select_notebooks_by_number(tmp_path, monkeypatch):
    for name in ("00_a.ipynb", "06_b.ipynb", "07_c.ipynb"):
        (tmp_path / name).write_text("{}")
    monkeypatch.setattr(gpu_check, "NOTEBOOKS", tmp_path)
    assert [p.name for p in gpu_check.select_notebooks([], ["06", "00"])] == ["00_a.ipynb", "06_b.ipynb"]
    assert len(gpu_check.select_notebooks([], [])) == 3
    with pytest.raises(SystemExit, match="no chapter 09"):
        gpu_check.select_notebooks([], ["09"])


def test_write_results_only_for_a_cuda_run(capsys):
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cpu", "--write-results"])
    assert "--write-results records a GPU run" in capsys.readouterr().err


def test_summary_table_has_one_row_per_chapter():
    rows = {"06_padim": {"tiny_seconds": 41.2, "claims_compared": 6, "claims_outside": 0, "smoke_ok": True,
                         "seconds_per_step": None, "seconds_per_image": 0.0123},
            "08_boostlu": {"tiny_seconds": 250.0, "claims_compared": 17, "claims_outside": None,
                           "smoke_ok": False, "seconds_per_step": 0.5, "seconds_per_image": None}}
    lines = gpu_check.summary_table(rows).splitlines()
    assert lines[0].split() == ["chapter", "tiny", "(s)", "claims", "outside", "smoke", "ms/step", "ms/image"]
    assert lines[1].split() == ["06_padim", "41", "6", "0", "ok", "-", "12.3"]
    assert lines[2].split() == ["08_boostlu", "250", "17", "failed", "FAILED", "500.0", "-"]


def test_step_timer_counts_steps_and_first_layer_images(tmp_path, monkeypatch):
    import json

    from tools import step_timer

    clock = iter([1.0, 1.5, 2.5, 10.0, 10.2, 10.6])
    monkeypatch.setattr(step_timer.StepTimer, "_now", staticmethod(lambda: next(clock)))
    timer = step_timer.StepTimer(tmp_path / "t.json", flush_every=1e9)
    for _ in range(3):
        timer.on_step()                                   # intervals 0.5 and 1.0
    stem, body = torch.nn.Conv2d(3, 4, 3), torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    images = torch.zeros(4, 3, 8, 8)
    timer.on_forward(body, (images,))                     # not a leaf: not counted
    timer.on_forward(stem, (torch.zeros(4, 5, 8, 8),))    # not an image batch
    with torch.enable_grad():
        timer.on_forward(stem, (images,))                 # training: counted, not timed
    with torch.no_grad():
        for _ in range(3):
            timer.on_forward(stem, (images,))             # 0.2 / 4 and 0.4 / 4 per image
    timer.flush()
    assert json.loads((tmp_path / "t.json").read_text()) == {
        "steps": 3, "seconds_per_step": 0.75, "images": 16, "seconds_per_image": pytest.approx(0.075)}


def test_smoke_run_records_time_per_step_and_per_image(tmp_path, monkeypatch):
    import nbformat


    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('PROFILE = "tiny"\nSEED = 0\nDEVICE = "auto"\nDATA_DIR = None\nSMOKE = False')
    params.metadata["tags"] = ["parameters"]
    body = nbformat.v4.new_code_cell(
        f"import sys\nsys.path.insert(0, {str(gpu_check.ROOT)!r})\nimport torch\nfrom utils import config\n"
        "RUN = config.start_run(PROFILE, SEED, DEVICE, DATA_DIR, SMOKE)\n"
        "net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(1))\n"
        "opt = torch.optim.SGD(net.parameters(), lr=0.1)\n"
        "for _ in range(4):\n    opt.zero_grad(); net(torch.rand(2, 3, 8, 8)).sum().backward(); opt.step()\n"
        "with torch.no_grad():\n    for _ in range(3):\n        net(torch.rand(5, 3, 8, 8))")
    nb.cells = [params, body]
    path = tmp_path / "96_steps.ipynb"
    nbformat.write(nb, path)
    monkeypatch.chdir(tmp_path)  # a relative output folder, as on the command line
    result = gpu_check.run_smoke(path, Path("out"), tmp_path, {}, "cpu")
    assert result["error"] is None, result
    assert result["steps"] == 4 and result["images"] == 4 * 2 + 3 * 5
    assert result["seconds_per_step"] > 0 and result["seconds_per_image"] > 0


def test_full_estimates_extrapolate_from_a_recorded_gpu_check(tmp_path):
    import json
    import sys

    sys.path.insert(0, str(gpu_check.ROOT / "book" / "_ext"))
    import runtimes

    missing = runtimes.full_estimates(tmp_path / "none.json")
    assert all(v.endswith("(an estimate: not yet run)") for v in missing.values())
    check = {"device": "NVIDIA H200", "date": "2026-12-04", "chapters": {
        "06_padim": {"seconds_per_step": None, "seconds_per_image": 0.01},
        "08_boostlu": {"seconds_per_step": None, "seconds_per_image": 0.001}}}
    path = tmp_path / "gpu-check.json"
    path.write_text(json.dumps(check))
    estimates = runtimes.full_estimates(path)
    images = runtimes.FULL_WORKLOAD["06_padim"]["images"]
    assert estimates["full_estimate_06_padim"].startswith(
        f"about {runtimes.format_seconds(images * 0.01)} on one NVIDIA H200 (extrapolated from the GPU check")
    # BoostLU trains: without a time per step its estimate stays an estimate
    assert estimates["full_estimate_08_boostlu"].endswith("(an estimate: not yet run)")
    assert estimates["full_estimate_02_cam"].endswith("(an estimate: not yet run)")


def test_record_writes_only_a_cuda_summary(tmp_path):
    import json

    summary = {"device": "NVIDIA H200", "device_type": "cuda", "torch": "2.11.0+cu130", "date": "2026-12-04",
               "seconds": 420.0, "nbval_lax": "passed", "chapters": {}}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    target = gpu_check.record(path, tmp_path / "gpu-check.json")
    assert json.loads(target.read_text()) == summary
    path.write_text(json.dumps({**summary, "device_type": "cpu"}))
    with pytest.raises(SystemExit, match="records a run on cpu, not CUDA"):
        gpu_check.record(path, tmp_path / "other.json")
    path.write_text(json.dumps({"device": "typed by hand"}))
    with pytest.raises(SystemExit, match="not a summary written by tools.gpu_check"):
        gpu_check.record(path, tmp_path / "other.json")
