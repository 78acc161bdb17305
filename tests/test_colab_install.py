"""The Colab install keeps Colab's torch when it is recent enough, and installs every other pin."""
from tools.colab_install import requirements_for, version_tuple

LINES = ["# pins", "torch==2.14.1", "torchvision==0.29.1", "fastai==2.8.12", "numpy>=2.0,<2.5"]


def test_recent_colab_torch_is_kept():
    assert requirements_for(LINES, "2.9.0+cu126") == ["# pins", "fastai==2.8.12", "numpy>=2.0,<2.5"]


def test_old_or_missing_torch_gets_the_pins():
    assert requirements_for(LINES, "2.1.0+cu121") == LINES
    assert requirements_for(LINES, None) == LINES


def test_version_tuple():
    assert version_tuple("2.14.1") == (2, 14) and version_tuple("2.4.0+cu121") == (2, 4)
