"""A training step captured in a CUDA graph does what the eager step does: the same losses and weights
over several steps, on new batches, and making it changes nothing."""

import copy

import pytest
import torch
import torch.nn.functional as F

from mambadyn import MambaConfig, MambaLM
from mambadyn.train import GraphedTrainStep


def _loss(model, x, y):
    return F.cross_entropy(model(x).float().flatten(0, 1), y.flatten())


def test_graphed_step_refuses_what_it_cannot_capture():
    m = MambaLM(MambaConfig(vocab_size=11, d_model=8, n_layer=1, d_state=2))
    opt = torch.optim.AdamW(m.parameters())
    x = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="needs the batch on CUDA"):
        GraphedTrainStep(m, opt, _loss, x, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")
def test_graphed_step_equals_the_eager_step():
    torch.manual_seed(0)
    eager = MambaLM(MambaConfig(vocab_size=50, d_model=32, n_layer=2, d_state=8)).cuda()
    graphed = copy.deepcopy(eager)
    opt_e = torch.optim.AdamW(eager.parameters(), lr=1e-3, capturable=True, fused=True)
    opt_g = torch.optim.AdamW(graphed.parameters(), lr=1e-3, capturable=True, fused=True)
    with pytest.raises(ValueError, match="capturable"):
        GraphedTrainStep(graphed, torch.optim.AdamW(graphed.parameters()), _loss,
                         *torch.zeros(2, 2, 9, dtype=torch.long, device="cuda"))
    batches = [torch.randint(0, 50, (2, 4, 17), device="cuda") for _ in range(4)]
    step = GraphedTrainStep(graphed, opt_g, _loss, batches[0][0], batches[0][1], grad_clip=1.0)
    for p, q in zip(eager.parameters(), graphed.parameters()):  # capturing changed nothing
        assert torch.equal(p, q)
    for x, y in batches:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss_e = _loss(eager, x, y)
        opt_e.zero_grad(set_to_none=True)
        loss_e.backward()
        torch.nn.utils.clip_grad_norm_(eager.parameters(), 1.0)
        opt_e.step()
        loss_g = step(x, y)
        torch.testing.assert_close(loss_g, loss_e.detach(), rtol=1e-4, atol=1e-4)
    for p, q in zip(eager.parameters(), graphed.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4)
