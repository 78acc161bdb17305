import json

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from tools import scoreboard  # noqa: E402
from utils import config, results, viz  # noqa: E402


def test_to_numpy_image_accepts_layouts_and_rejects_normalised():
    chw = torch.rand(3, 4, 5)
    assert viz.to_numpy_image(chw).shape == (4, 5, 3)
    assert viz.to_numpy_image(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="still normalised"):
        viz.to_numpy_image(chw - 0.5)
    with pytest.raises(ValueError, match="expected an image"):
        viz.to_numpy_image(np.zeros((2, 3, 4, 5)))


def test_overlay_blends_and_checks_shape():
    img = np.zeros((4, 4, 3))
    heat = np.arange(16.0).reshape(4, 4)
    out = viz.overlay(img, heat, alpha=1.0)
    assert out.shape == (4, 4, 3)
    expected = np.asarray(matplotlib.colormaps[viz.CMAP](heat / 15)[..., :3])
    assert np.allclose(out, expected)
    assert np.allclose(viz.overlay(img, np.ones((4, 4)), alpha=0.5),
                       0.5 * np.asarray(matplotlib.colormaps[viz.CMAP](np.zeros((4, 4)))[..., :3]))
    with pytest.raises(ValueError, match="upsample it first"):
        viz.overlay(img, np.ones((2, 2)))


def test_show_grid_titles_and_png(tmp_path):
    fig = viz.show_grid([np.zeros((4, 4))] * 3, ["a", "b", "c"], ncols=2)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "c"]
    fig.savefig(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="2 titles for 3 images"):
        viz.show_grid([np.zeros((4, 4))] * 3, ["a", "b"])


def test_record_appends_replaces_and_sets_status():
    results.record("99_test", "accuracy", 0.9, paper=0.95, profile="tiny")
    results.record("99_test", "accuracy", 0.91, paper=0.95, profile="tiny")
    results.record("99_test", "auroc", 0.97, paper=0.975, profile="full")
    results.record("99_test", "gap claim", 0.5, paper=0.9, profile="full")
    results.record("99_test", "ours", 3.0, unit="s")
    rows = json.loads((results.results_dir() / "99_test.tiny.json").read_text())
    assert [(r["claim"], r["ours"], r["status"]) for r in rows] == [
        ("accuracy", 0.91, "not comparable (tiny profile)"), ("ours", 3.0, "ours only")]
    full = {r["claim"]: r["status"] for r in results.load_all()["99_test.full"]}
    assert full == {"auroc": "reproduced", "gap claim": "gap"}


def test_profile_independent_values_are_compared_in_the_tiny_profile():
    results.record("99_test", "count", 568.7, paper=569, profile="tiny", tolerance=1.0, profile_independent=True)
    results.record("99_test", "typo", 1.91, paper=1.19, profile="tiny", tolerance=0.005, profile_independent=True)
    results.record("99_test", "trained", 0.9, paper=0.9, profile="tiny")
    status = {r["claim"]: r["status"] for r in results.load_all()["99_test.tiny"]}
    assert status == {"count": "reproduced", "typo": "gap", "trained": "not comparable (tiny profile)"}


def test_record_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown profile"):
        results.record("99_test", "x", 1.0, profile="medium")
    with pytest.raises(ValueError, match="must be finite"):
        results.record("99_test", "x", float("nan"))


def test_scoreboard_renders_every_row_under_a_link_to_its_chapter():
    results.record("99_test", "auroc", 97.04, paper=97.5, unit="%", profile="full", note="paper: Table 2, mean of 15")
    results.record("99_test", "params", 4.209088, unit="M", profile="tiny")
    page = scoreboard.render(results.load_all())
    assert "## [99_test](../notebooks/99_test.ipynb)" in page
    assert ('<td data-label="claim">auroc</td><td data-label="paper">97.5 %</td>'
            '<td data-label="ours">97.04 %</td><td data-label="status">reproduced</td>'
            '<td data-label="profile">full</td>'
            '<td data-label="source and setting">paper: Table 2, mean of 15</td>') in page
    assert ('<td data-label="claim">params</td><td data-label="paper">–</td>'
            '<td data-label="ours">4.209 M</td><td data-label="status">ours only</td>') in page
    assert "No results recorded yet." in scoreboard.render({})


def test_recorded_values_keep_four_significant_digits_whatever_the_thread_count():
    import torch

    def measured(threads: int) -> float:
        torch.set_num_threads(threads)
        x = torch.linspace(0, 1, 100_003, dtype=torch.float32)
        return float((x * 0.1).sum())  # summation order depends on the thread count

    before = torch.get_num_threads()
    try:
        rows = [results.record("99_test", "sum", measured(n)) for n in (1, 2)]
    finally:
        torch.set_num_threads(before)
    assert rows[0]["ours"] == rows[1]["ours"] == results.significant(rows[0]["ours"])
    assert results.significant(81.25557) == results.significant(81.255569) == 81.26


def test_book_style_sets_dpi_and_colormap():
    viz.use_book_style()
    assert matplotlib.rcParams["figure.dpi"] == viz.DPI and matplotlib.rcParams["image.cmap"] == viz.CMAP


def test_a_smoke_run_records_nothing_and_accepts_nan(tmp_path, monkeypatch):
    monkeypatch.setenv(results.RESULTS_ENV, str(tmp_path))
    smoke = config.Run(config.get_profile("full"), 0, torch.device("cpu"), None, smoke=True)
    row = results.record("03_gradcam", "rank correlation of a constant map", float("nan"), run=smoke)
    assert row["status"].startswith("smoke run") and list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="finite"):
        results.record("03_gradcam", "rank correlation of a constant map", float("nan"), run=None)
