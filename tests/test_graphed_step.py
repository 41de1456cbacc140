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


def test_run_cuda_graph_is_refused_where_it_cannot_run():
    from mambadyn.train import RunConfig

    with pytest.raises(ValueError, match="run.cuda_graph needs a CUDA device"):
        RunConfig(cuda_graph=True, device="cpu")
    with pytest.raises(ValueError, match="run.cuda_graph needs a CUDA device"):
        RunConfig(cuda_graph=True, amp="fp16")


def test_the_fast_paths_do_not_block_resuming_older_runs():
    """Stored configs from before ``model.fused`` and ``run.cuda_graph`` existed resume and are reused: the two
    change how a step runs, not what it computes."""
    from mambadyn.train.loop import config_differences

    stored = {"run": {"seed": 0}, "model": {"d_model": 8}}
    requested = {"run": {"seed": 0, "cuda_graph": True}, "model": {"d_model": 8, "fused": True}}
    assert config_differences(stored, requested) == []
    assert config_differences(stored, {"run": {"seed": 1}, "model": {"d_model": 8}}) != []


def test_a_tensor_learning_rate_is_saved_as_a_number(tmp_path):
    from mambadyn.train import load_checkpoint, save_checkpoint

    m = MambaLM(MambaConfig(vocab_size=11, d_model=8, n_layer=1, d_state=2))
    opt = torch.optim.AdamW(m.parameters(), lr=torch.tensor(0.01))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    save_checkpoint(tmp_path, 3, m, opt, sched, None, {})
    opt2 = torch.optim.AdamW(m.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0)
    assert load_checkpoint(tmp_path / "ckpt-3", m, opt2, sched2, None)["step"] == 3
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.005)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need CUDA")
def test_training_with_cuda_graph_follows_the_eager_run(tmp_path):
    """`mambadyn train` with run.cuda_graph: the same loss curve and schedule as the eager loop, and a resumed
    graphed run ends where the uninterrupted one does."""
    import json

    from mambadyn.train import LMTrainConfig, LMTask, apply_overrides, train

    class Stop(Exception):
        pass

    def stop_at_12(step, metrics):
        if step == 12:
            raise Stop

    def run(name, graph, resume=False, on_eval=None):
        cfg = apply_overrides(LMTrainConfig(), [f"run.out_dir={tmp_path / name}", f"run.cuda_graph={graph}",
                                                "run.device=cuda", "optim.steps=24", "optim.warmup_steps=5",
                                                "run.log_every=4", "run.eval_every=12", "run.ckpt_every=6",
                                                "data.path=" + str(_text(tmp_path)), "data.seq_len=32",
                                                "run.progress=false"])
        train(LMTask, cfg, resume=resume, on_eval=on_eval)
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                if '"loss"' in line]

    eager, graphed = run("eager", False), run("graphed", True)
    assert [r["lr"] for r in eager] == pytest.approx([r["lr"] for r in graphed])
    for a, b in zip(eager, graphed):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-2), (a, b)
    with pytest.raises(Stop):  # interrupted at step 12, after the checkpoint at 6
        run("resumed", True, on_eval=stop_at_12)
    resumed = run("resumed", True, resume=True)
    assert resumed[-1]["loss"] == pytest.approx(graphed[-1]["loss"], rel=2e-2)


def _text(tmp_path):
    p = tmp_path / "text.txt"
    if not p.exists():
        g = torch.Generator().manual_seed(0)
        p.write_text("".join("abcdefgh \n"[i] for i in torch.randint(0, 10, (20000,), generator=g).tolist()))
    return p
