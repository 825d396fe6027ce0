"""Selective state-space layers in pure PyTorch (CPU and GPU), with `mamba_ssm` as an optional fast path."""

from rtgen.ssm.dispatch import get_backend, kernels_available, selective_scan, set_backend, ssd, use_backend
from rtgen.ssm.mamba import Mamba
from rtgen.ssm.mamba2 import Mamba2, RMSNormGated
from rtgen.ssm.orders import CROSS_SCAN, ORDER_NAMES, inverse, spiral, token_order
from rtgen.ssm.scan import linear_scan, selective_scan_fast, selective_scan_ref
from rtgen.ssm.ssd import ssd_chunked, ssd_ref
from rtgen.ssm.vision import VisionSSM

__all__ = [
    "CROSS_SCAN", "Mamba", "Mamba2", "ORDER_NAMES", "RMSNormGated", "VisionSSM", "get_backend",
    "inverse", "kernels_available", "linear_scan", "selective_scan", "selective_scan_fast", "selective_scan_ref",
    "set_backend", "spiral", "ssd", "ssd_chunked", "ssd_ref", "token_order", "use_backend",
]
