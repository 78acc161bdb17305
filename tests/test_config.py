import random

import numpy as np
import pytest
import torch

from utils import config


def test_profiles_and_unknown_name_lists_choices():
    assert config.get_profile("tiny").offline and not config.get_profile("full").offline
    with pytest.raises(ValueError, match=r"unknown profile 'smal'.*'tiny', 'full'"):
        config.get_profile("smal")


def test_seed_everything_repeats_all_generators():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    config.seed_everything(3)
    first = draw()
    config.seed_everything(3)
    assert draw() == first
    config.seed_everything(4)
    assert draw() != first


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_seed_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="non-negative int"):
        config.seed_everything(bad)


def test_pick_device():
    assert config.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert config.pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            config.pick_device("cuda")


def test_cache_dir_from_env_is_created(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b"
    monkeypatch.setenv("CVBOOK_CACHE", str(target))
    assert config.cache_dir() == target and target.is_dir()


def test_data_dir_override_env_and_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("CVBOOK_DATA", raising=False)
    assert config.data_dir() is None
    monkeypatch.setenv("CVBOOK_DATA", str(tmp_path))
    assert config.data_dir() == tmp_path
    other = tmp_path / "other"
    other.mkdir()
    assert config.data_dir(other) == other
    with pytest.raises(FileNotFoundError, match="does not exist"):
        config.data_dir(tmp_path / "nope")


def test_start_run_summary(capsys, monkeypatch, restore_numerics):
    monkeypatch.delenv("CVBOOK_DATA", raising=False)
    run = config.start_run("tiny", 1, "cpu", None)
    assert run.tiny and run.seed == 1 and run.device.type == "cpu" and run.data_dir is None
    assert "profile=tiny seed=1 device=cpu" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown profile"):
        config.start_run("huge")


def test_progress_bars_follow_the_environment(capsys, monkeypatch):
    monkeypatch.setenv(config.PROGRESS_ENV, "0")
    assert not config.progress_enabled()
    assert list(config.progress(range(3), desc="quiet")) == [0, 1, 2]
    assert "quiet" not in capsys.readouterr().err
    monkeypatch.setenv(config.PROGRESS_ENV, "1")
    assert config.progress_enabled()
    assert list(config.progress(range(3), desc="shown")) == [0, 1, 2]
    assert "shown" in capsys.readouterr().err


def test_claim_returns_nothing_and_skips_in_smoke_runs(capsys):
    run = config.Run(config.get_profile("full"), 0, torch.device("cpu"), None, smoke=True)
    assert run.claim(False, "accuracy above chance") is None
    assert "claim not checked: accuracy above chance" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="accuracy above chance"):
        config.Run(config.get_profile("tiny"), 0, torch.device("cpu"), None).claim(False, "accuracy above chance")


@pytest.fixture
def restore_numerics():
    """Put PyTorch's global numerics flags back as they were after the test."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
    torch.set_float32_matmul_precision(saved[2])
    torch.use_deterministic_algorithms(saved[3], warn_only=saved[4])


def test_numerics_policy_per_profile_and_override(monkeypatch):
    monkeypatch.delenv(config.NUMERICS_ENV, raising=False)
    assert config.numerics_for("tiny").name == "strict" and config.numerics_for("full").name == "fast"
    assert config.numerics_for("full", override="strict").name == "strict"
    monkeypatch.setenv(config.NUMERICS_ENV, "strict")
    assert config.numerics_for("full").name == "strict"
    monkeypatch.setenv(config.NUMERICS_ENV, "tf32")
    with pytest.raises(ValueError, match=r"unknown numerics policy 'tf32'.*'strict', 'fast'"):
        config.numerics_for("tiny")
    with pytest.raises(ValueError, match="unknown profile"):
        config.numerics_for("huge")


def test_strict_policy_turns_tf32_off_and_algorithms_deterministic(monkeypatch, restore_numerics):
    monkeypatch.delenv(config.CUBLAS_WORKSPACE_ENV, raising=False)
    config.NUMERICS["fast"].apply()
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "high"
    assert not torch.are_deterministic_algorithms_enabled()
    config.NUMERICS["strict"].apply()
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "highest"
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    if not torch.cuda.is_initialized():
        assert config.os.environ[config.CUBLAS_WORKSPACE_ENV] == ":4096:8"


def test_banner_names_the_policy_and_nothing_machine_specific(capsys, monkeypatch, restore_numerics):
    monkeypatch.delenv("CVBOOK_DATA", raising=False)
    monkeypatch.delenv(config.NUMERICS_ENV, raising=False)
    run = config.start_run("tiny", 0, "cpu", None)
    line = capsys.readouterr().out.strip()
    assert run.numerics.name == "strict" and not torch.backends.cudnn.allow_tf32
    assert line == ("profile=tiny seed=0 device=cpu numerics=strict (TF32 off, deterministic); "
                    "no data directory (generated data only)")
    assert config.NUMERICS["fast"].banner() == (
        "numerics=fast (TF32 on; claims within 0.02 of a strict run, trained ones 0.05)")


def test_full_float32_turns_tf32_off_inside_and_restores_it(restore_numerics):
    config.NUMERICS["fast"].apply()
    with config.full_float32():
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "highest"
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    with pytest.raises(RuntimeError, match="inside"), config.full_float32():
        raise RuntimeError("inside")
    assert torch.get_float32_matmul_precision() == "high"
