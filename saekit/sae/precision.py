"""Where bf16 GEMMs are native, and which dtype the encoder GEMM runs in.

A bf16 GEMM is only worth it where the hardware does bf16 natively: CUDA GPUs from Ampere on, and CPUs with
AVX512-BF16 or AMX (oneDNN's probe). Elsewhere it is emulated and slower than fp32: on an AVX2-only EPYC a
TopK step with `sae.encoder_bf16=true` took 6.2× the fp32 encoder GEMM against 1.35× in fp32 (4.6× slower,
measured side by side). So a requested bf16 encoder GEMM falls back to fp32 there, with one warning.

    native_bf16_gemm(torch.device("cpu"))            # False on an AVX2-only CPU
    encoder_gemm_dtype(cfg.encoder_bf16, x.device)    # torch.bfloat16 or torch.float32
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

_NATIVE: dict[str, bool] = {}
"""Probe results per device type (one probe per process)."""
_WARNED: set[str] = set()
"""Device types whose bf16 fallback was already reported."""
SLOWDOWN_NOTE = "emulated bf16 measured 4.6x slower than fp32 on an AVX2-only CPU"


def native_bf16_gemm(device: torch.device | str) -> bool:
    """True where bf16 GEMMs run natively: CUDA with compute capability >= 8, CPUs with AVX512-BF16/AMX."""
    device = torch.device(device)
    if device.type not in _NATIVE:
        _NATIVE[device.type] = _probe(device)
    return _NATIVE[device.type]


def _probe(device: torch.device) -> bool:
    try:
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported(including_emulation=False)
        if device.type == "cpu":
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError, TypeError):  # private/changed probe: assume no native bf16
        pass
    return False


def encoder_gemm_dtype(requested_bf16: bool, device: torch.device | str) -> torch.dtype:
    """bf16 when it was requested and is native on `device`; else fp32 (warning once per device type
    when bf16 was requested)."""
    if not requested_bf16:
        return torch.float32
    device = torch.device(device)
    if native_bf16_gemm(device):
        return torch.bfloat16
    if device.type not in _WARNED:
        _WARNED.add(device.type)
        logger.warning(
            "sae.encoder_bf16=true, but this %s has no native bf16 GEMM (%s): the encoder GEMM runs in "
            "fp32 instead (%s); set sae.encoder_bf16=false to silence this",
            device.type.upper(),
            "compute capability < 8" if device.type == "cuda" else "no AVX512-BF16/AMX",
            SLOWDOWN_NOTE,
        )
    return torch.float32
