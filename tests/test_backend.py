"""Kernel backend selection: env override, bad values, auto rules, caching and the one-time log line."""

from __future__ import annotations

import logging
import sys

import pytest
import torch

from saekit.kernels import backend
from saekit.kernels.backend import kernel_backend, reset_kernel_backend, triton_available


@pytest.fixture(autouse=True)
def _fresh_choice(monkeypatch):
    """Each test decides from scratch, with no SAEKIT_KERNELS leaking in from the shell."""
    monkeypatch.delenv("SAEKIT_KERNELS", raising=False)
    reset_kernel_backend()
    yield
    reset_kernel_backend()


def fake_cuda(monkeypatch, present: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: present)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "FakeGPU")


@pytest.mark.parametrize("interpret", ["0", "1"])
def test_torch_override_always_wins(monkeypatch, interpret):
    fake_cuda(monkeypatch, True)
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    monkeypatch.setenv("SAEKIT_KERNELS", "torch")
    assert kernel_backend() == "torch"


def test_bad_value_lists_the_choices(monkeypatch):
    monkeypatch.setenv("SAEKIT_KERNELS", "cuda")
    with pytest.raises(ValueError, match="auto, triton, torch") as info:
        kernel_backend()
    assert "'cuda'" in str(info.value)


def test_auto_uses_triton_only_with_a_gpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter alone must not tempt `auto`
    fake_cuda(monkeypatch, False)
    assert kernel_backend() == "torch"
    reset_kernel_backend()
    fake_cuda(monkeypatch, True)
    assert kernel_backend() == "triton"


def test_auto_falls_back_when_triton_does_not_import(monkeypatch):
    fake_cuda(monkeypatch, True)
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    ok, reason = triton_available()
    assert not ok and "triton does not import" in reason
    assert kernel_backend() == "torch"


def test_forced_triton_uses_interpreter_only_when_asked(monkeypatch):
    fake_cuda(monkeypatch, False)
    monkeypatch.setenv("SAEKIT_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernel_backend() == "triton"
    reset_kernel_backend()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="SAEKIT_KERNELS=torch"):
        kernel_backend()


def test_choice_is_cached_until_reset(monkeypatch):
    monkeypatch.setenv("SAEKIT_KERNELS", "torch")
    assert kernel_backend() == "torch"
    fake_cuda(monkeypatch, True)
    monkeypatch.setenv("SAEKIT_KERNELS", "triton")
    assert kernel_backend() == "torch", "a later env change must not flip the backend mid-process"
    reset_kernel_backend()
    assert kernel_backend() == "triton"


def test_reason_logged_once_at_info(monkeypatch, caplog):
    fake_cuda(monkeypatch, False)
    with caplog.at_level(logging.INFO, logger=backend.__name__):
        for _ in range(3):
            kernel_backend()
    lines = [r for r in caplog.records if r.name == backend.__name__]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "torch" in lines[0].getMessage() and "no CUDA device" in lines[0].getMessage()


def test_triton_available_reports_the_gpu(monkeypatch):
    fake_cuda(monkeypatch, True)
    ok, reason = triton_available()
    assert ok and "FakeGPU" in reason
    fake_cuda(monkeypatch, False)
    assert triton_available() == (False, "no CUDA device visible to torch")
