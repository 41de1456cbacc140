"""The fused causal conv + SiLU in Triton against PyTorch's conv1d in float64, forward and every gradient:
in Triton's interpreter on CPU (a subprocess), compiled on CUDA."""

import pytest
import torch

pytest.importorskip("triton")

from tests.support.triton_interpret import run_script  # noqa: E402

SCRIPT = "conv"


def _check(interpret: bool):
    worst = run_script(SCRIPT, interpret)
    for k, v in worst.items():
        assert v < (3e-2 if k.startswith("bfloat16") else 1e-5), (k, v, worst)


def test_fused_conv_silu_matches_conv1d_in_the_interpreter():
    _check(interpret=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled kernels need CUDA")
def test_fused_conv_silu_matches_conv1d_on_cuda():
    _check(interpret=False)


def test_bad_shapes_are_named():
    from mambadyn.fused.conv import causal_conv1d_silu

    with pytest.raises(ValueError, match="x must have shape"):
        causal_conv1d_silu(torch.zeros(3, 4), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="weight must have shape"):
        causal_conv1d_silu(torch.zeros(1, 3, 4), torch.zeros(5, 4))
    with pytest.raises(ValueError, match="bias must have shape"):
        causal_conv1d_silu(torch.zeros(1, 3, 4), torch.zeros(3, 4), torch.zeros(4))
