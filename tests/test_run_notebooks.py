import nbformat
import pytest

from tools import run_notebooks


def make_nb(path, source="x = 1"):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('PROFILE = "tiny"'), nbformat.v4.new_code_cell(source)]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)
    return nb


def stamp(path, profile="tiny"):
    nb = nbformat.read(path, as_version=4)
    nb.metadata["cvbook"] = {"source_sha256": run_notebooks.source_digest(nb), "profile": profile}
    nbformat.write(nb, path)


def test_needs_run_tracks_source_and_profile(tmp_path):
    path = tmp_path / "01_x.ipynb"
    make_nb(path)
    assert run_notebooks.needs_run(path, "tiny")  # never executed
    stamp(path)
    assert not run_notebooks.needs_run(path, "tiny")
    assert run_notebooks.needs_run(path, "full")  # parameters changed
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].source = "x = 2"
    nbformat.write(nb, path)
    assert run_notebooks.needs_run(path, "tiny")  # source changed


def test_outputs_and_injected_parameters_do_not_count(tmp_path):
    path = tmp_path / "01_x.ipynb"
    make_nb(path)
    stamp(path)
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="1\n")]
    injected = nbformat.v4.new_code_cell('PROFILE = "tiny"')
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(1, injected)
    nbformat.write(nb, path)
    assert not run_notebooks.needs_run(path, "tiny")


def test_main_reports_missing_notebook(tmp_path, capsys):
    assert run_notebooks.main([str(tmp_path / "nope.ipynb")]) == 2
    assert "no notebook" in capsys.readouterr().err


def make_profile_nb(path, body):
    """A notebook whose second cell runs ``body`` with PROFILE defined by its parameters cell."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell('PROFILE = "tiny"'), nbformat.v4.new_code_cell(body)]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, path)
    return path.read_bytes()


def test_failed_tiny_run_leaves_the_committed_notebook_untouched(tmp_path):
    from papermill.exceptions import PapermillExecutionError

    path = tmp_path / "01_x.ipynb"
    before = make_profile_nb(path, 'raise RuntimeError("broken on purpose")')
    with pytest.raises(PapermillExecutionError, match="broken on purpose"):
        run_notebooks.execute(path, "tiny")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["01_x.ipynb"]
    assert not list(run_notebooks.RUNS.glob("01_x.*")), "temporary files must be cleaned up"


def test_tiny_run_injects_tiny_even_after_a_full_run_left_its_cell(tmp_path):
    path = tmp_path / "01_x.ipynb"
    make_profile_nb(path, "print('ran with', PROFILE)")
    nb = nbformat.read(path, as_version=4)
    stale = nbformat.v4.new_code_cell('PROFILE = "full"')
    stale.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(1, stale)
    nbformat.write(nb, path)
    where, seconds = run_notebooks.execute(path, "tiny")
    assert where == path and seconds > 0
    nb = nbformat.read(path, as_version=4)
    assert not any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert "ran with tiny" in nb.cells[-1].outputs[0]["text"]
    assert nb.metadata["cvbook"]["profile"] == "tiny" and nb.metadata["cvbook"]["seconds"] > 0
    assert not run_notebooks.needs_run(path, "tiny")


def test_full_run_writes_elsewhere_and_never_touches_the_notebook(tmp_path):
    path = tmp_path / "01_x.ipynb"
    before = make_profile_nb(path, "print('ran with', PROFILE)")
    where, _ = run_notebooks.execute(path, "full", output_dir=tmp_path / "full")
    assert path.read_bytes() == before
    assert where == tmp_path / "full" / "01_x.ipynb"
    assert "ran with full" in nbformat.read(where, as_version=4).cells[-1].outputs[0]["text"]
