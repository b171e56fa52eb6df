"""fer_core.runtime's process settings: `precision: fp32` turns TF32 off (cuDNN and cuBLAS),
any other precision restores torch's defaults. The flags are process state that CUDA reads
at each kernel; here, without a GPU, what is set is what is checked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from fer_core.runtime import use_precision


@pytest.fixture
def tf32_flags_restored() -> Iterator[None]:
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("precision", ["fp32", "auto", "bf16", "fp16"])
def test_fp32_means_no_tf32_and_the_rest_torchs_defaults(tf32_flags_restored, precision):
    use_precision("fp32" if precision != "fp32" else "auto")  # start from the other state
    use_precision(precision)
    assert torch.backends.cudnn.allow_tf32 is (precision != "fp32")
    assert torch.backends.cuda.matmul.allow_tf32 is False
