"""The Triton decoding step (conv state update and S6 state update) against the PyTorch step, in
Triton's interpreter on CPU (a subprocess: the interpreter is switched on before triton compiles) and
compiled on CUDA."""

import pytest
import torch

pytest.importorskip("triton")

from tests.support.triton_interpret import run_script  # noqa: E402

SCRIPT = "step"


def _check(interpret: bool):
    worst = run_script(SCRIPT, interpret)
    for k, v in worst.items():
        tol = 2e-2 if "bfloat16" in k else 1e-5
        assert v < tol, (k, v, worst)


def test_decoding_step_kernels_match_pytorch_in_the_interpreter():
    _check(interpret=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled kernels need CUDA")
def test_decoding_step_kernels_match_pytorch_on_cuda():
    _check(interpret=False)
