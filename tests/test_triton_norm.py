"""RMSNorm fused with the residual add, in Triton, against float64 PyTorch, forward and every gradient
(the residual output's gradient included): in the interpreter on CPU (a subprocess), compiled on CUDA."""

import pytest
import torch

pytest.importorskip("triton")

from tests.support.triton_interpret import run_script  # noqa: E402

SCRIPT = "norm"


def _check(interpret: bool):
    worst = run_script(SCRIPT, interpret)
    for k, v in worst.items():
        assert v < (3e-2 if k.startswith("bfloat16") else 1e-5), (k, v, worst)


def test_rms_norm_add_matches_pytorch_in_the_interpreter():
    _check(interpret=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled kernels need CUDA")
def test_rms_norm_add_matches_pytorch_on_cuda():
    _check(interpret=False)


def test_bad_shapes_are_named():
    from mambadyn.fused.norm import rms_norm_add

    with pytest.raises(ValueError, match="weight must have shape"):
        rms_norm_add(torch.zeros(2, 4), None, torch.zeros(3))
    with pytest.raises(ValueError, match="residual must have"):
        rms_norm_add(torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(4))
