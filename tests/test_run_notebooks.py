import nbformat

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
