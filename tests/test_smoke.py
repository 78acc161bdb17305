"""The smoke run of the full profile: a broken full-only branch fails, naming notebook and cell."""
import nbformat

from tools import smoke

ROOT = smoke.ROOT


def broken_full_branch_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('PROFILE = "tiny"\nSEED = 0\nDEVICE = "auto"\nDATA_DIR = None\nSMOKE = False')
    params.metadata["tags"] = ["parameters"]
    setup = nbformat.v4.new_code_cell(
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom utils import config\n"
        "RUN = config.start_run(PROFILE, SEED, DEVICE, DATA_DIR, SMOKE)")
    branch = nbformat.v4.new_code_cell(
        "if RUN.tiny:\n    n = 1\nelse:\n    n = undefined_in_the_full_branch  # the bug a GPU reader would meet")
    nb.cells = [params, setup, branch]
    nbformat.write(nb, path)


def test_broken_full_only_branch_is_reported_with_its_cell(tmp_path, monkeypatch, capsys):
    path = tmp_path / "99_broken.ipynb"
    broken_full_branch_notebook(path)
    monkeypatch.setattr(smoke, "write_stand_in_data", lambda target, seed=0: target.mkdir(parents=True) or target)
    monkeypatch.setattr(smoke, "write_stand_in_weights", lambda home: [])
    assert smoke.main([str(path), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "notebooks/99_broken.ipynb" in err and "cell 2" in err
    assert "NameError" in err and "undefined_in_the_full_branch" in err
    executed = nbformat.read(tmp_path / "out" / "99_broken.ipynb", as_version=4)
    assert any("SMOKE = True" in c.source for c in executed.cells), "smoke parameters were injected"


def test_same_notebook_passes_the_tiny_profile(tmp_path):
    from tools import run_notebooks

    path = tmp_path / "99_broken.ipynb"
    broken_full_branch_notebook(path)
    run_notebooks.execute(path, "tiny")
    assert nbformat.read(path, as_version=4).metadata["cvbook"]["profile"] == "tiny"


def test_stand_in_mnist_files_read_back_with_torchvision(tmp_path):
    import numpy as np
    import torch
    from torchvision.datasets import MNIST

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    smoke.write_idx(raw / "train-images-idx3-ubyte", images)
    smoke.write_idx(raw / "train-labels-idx1-ubyte", np.array([3, 7]))
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes((raw / name.replace("t10k", "train")).read_bytes())
    ds = MNIST(str(tmp_path), train=True, download=False)
    assert torch.equal(ds.data, torch.from_numpy(images)) and ds.targets.tolist() == [3, 7]
