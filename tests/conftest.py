"""Test-wide settings. Environment variables are set before any saekit/triton import so that Triton
kernels run in the interpreter on CPU and nothing reaches the network."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_name] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
# The encoder path is otherwise chosen by a timing at first use and cached per user: tests must not depend on
# what an earlier (loaded or quiet) process measured, so they run the dense path unless they pick one.
os.environ.setdefault("SAEKIT_ENCODE_PATH", "dense")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def bad_input_template(tmp_path_factory):
    """A tiny cache and runs for the bad-input suite, built once per session (see tests/bad_inputs.py)."""
    from bad_inputs import build_template

    return build_template(tmp_path_factory.mktemp("bad_input_template"))


@pytest.fixture
def sandbox(bad_input_template, tmp_path):
    """A fresh copy of the bad-input template for one case."""
    import shutil

    return shutil.copytree(bad_input_template, tmp_path / "sandbox")
