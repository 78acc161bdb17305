"""The GPU check's logic, tested on the CPU: tolerances per kind of claim, and a clear stop without CUDA."""
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


@pytest.mark.parametrize("value, ok", [("91.0", True), ("99.0", False)])
def test_rehearsal_on_cpu_compares_recorded_numbers_with_the_committed_ones(tmp_path, monkeypatch, capsys, value, ok):
    import json

    committed = tmp_path / "committed"
    committed.mkdir()
    nb = tmp_path / "98_rehearsal.ipynb"
    (committed / f"{nb.stem}.tiny.json").write_text(json.dumps(
        [{"claim": "pixel AUROC of a fixed map", "ours": 91.0, "unit": "%"}]))
    recording_notebook(nb, value)
    monkeypatch.setattr(gpu_check, "COMMITTED_RESULTS", committed)
    code = gpu_check.main(["--device", "cpu", "--no-nbval", "--no-smoke", "--output", str(tmp_path / "out"), str(nb)])
    out, err = capsys.readouterr()
    assert "1 claims compared" in out
    assert (code == 0) == ok
    if not ok:
        assert "GPU CHECK FAILURE: 98_rehearsal.ipynb: 'pixel AUROC of a fixed map' (measured)" in err
