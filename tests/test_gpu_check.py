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
