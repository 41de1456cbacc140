"""The Triton selective scan against the float64 reference, forward and every gradient.

On CPU the kernels run in Triton's interpreter (in a subprocess, because the interpreter must be
switched on before triton compiles anything); with CUDA they run compiled, on many shapes, with
the allocator poisoned so unwritten output elements show up as NaN."""

import json
from dataclasses import asdict

import pytest
import torch

from tests.support.poison import poison_allocator
from mambadyn.scan.verify import Case, compare_with_reference

pytest.importorskip("triton")

from tests.support.triton_interpret import run_script  # noqa: E402

INTERPRETED = [
    Case(2, 5, 37, 4, initial_state=True, last_state=True),      # L not a multiple of the chunk
    Case(1, 3, 9, 3, has_z=False, has_D=False, has_bias=False, softplus=False),  # n not a power of two
    Case(1, 3, 40, 4, dtype="bfloat16", last_state=True),        # 8 steps per thread: the reverse scan
    Case(1, 3, 21, 4, last_state=True, forward_only=True),       # no grad: no states saved
]

SCRIPT = "scan"


def assert_close(result):
    assert not result["nonfinite"], f"non-finite {result['nonfinite']} in {result['case']}"
    bad = {k: v for k, v in result["errors"].items() if v > result["tolerance"]}
    assert not bad, f"{result['case']}: errors above {result['tolerance']}: {bad}"


WIDE_SCRIPT = "scan_wide"


def test_wide_float32_forward_matches_reference_in_the_interpreter():
    # the knob that gives float32 tiles 8 steps per thread (FWD_TUNING's float32 default since it was timed)
    for result in run_script(WIDE_SCRIPT, interpret=True):
        assert_close(result)


def test_kernel_matches_reference_in_the_interpreter():
    for result in run_script(SCRIPT, interpret=True, args=(json.dumps([asdict(c) for c in INTERPRETED]),)):
        assert_close(result)


def test_kernels_compile_for_the_h100_without_spilling_in_their_loop():
    # what the interpreter cannot catch: the compiled kernels' lowering, and a register blow-up in the
    # per-state loop (Triton ships ptxas, so this compiles for sm_90 on a CPU machine)
    from tests.support.sass import count

    for kernel in ("fwd", "bwd"):
        for dtype in (torch.bfloat16, torch.float32):
            c = count(kernel, dtype)
            assert c.loop_spill_instructions == 0, c
            assert c.loop_mix.get("MUFU", 0) >= c.elements_per_thread, c  # the loop found is the state pass
            assert c.loop_per_element < 100, c


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_d,chunk,lanes", [(2, 128, 16), (1, 256, 32), (2, 256, 32)])
def test_the_shuffle_flip_sees_the_layout_it_was_written_for(dtype, block_d, chunk, lanes):
    # _flip_runs is inline PTX that pairs registers across lanes by a fixed pattern: right only where each
    # thread holds one row's 8 consecutive steps and a row lies on 16 (chunk 128) or 32 (chunk 256) lanes.
    # That is the layout Triton gives the backward's tiles in an aligned launch (the only one that compiles
    # the flip); a Triton that chose another would give wrong gradients silently on the GPU, so the
    # compiled IR is checked here, on CPU
    import re

    from tests.support.sass import compile_triton

    ttgir = compile_triton("bwd", dtype, bwd_block_d=block_d, bwd_chunk=chunk)[0].asm["ttgir"]
    layouts = dict(re.findall(r"^(#blocked\d*) = #ttg\.blocked<\{(.*)\}>", ttgir, re.M))
    flips = [line for line in ttgir.splitlines() if "elementwise_inline_asm" in line and "shfl.sync.bfly" in line]
    assert len(flips) == 3, "the reverse scan's two input flips and one output flip"
    rows = 32 // lanes
    for line in flips:
        assert line.count(f"shfl.sync.bfly.b32 $0, $15, {lanes - 1}, 31, -1;") == 1, line  # the mirror lane
        for name in set(re.findall(r"#blocked\d*", line)):
            assert layouts[name] == (f"sizePerThread = [1, 8], threadsPerWarp = [{rows}, {lanes}], "
                                     "warpsPerCTA = [1, 1], order = [1, 0]"), (name, layouts[name])


def test_bad_tuning_is_refused():
    from mambadyn.scan.triton_tuning import _tunings

    with pytest.raises(ValueError, match="bwd_chunk"):
        _tunings(2, chunk=128, bwd_chunk=64)
    with pytest.raises(ValueError, match="power of two"):
        _tunings(4, block_d=3)
    _, bwd = _tunings(2, chunk=256)
    assert bwd.chunk == 256  # the backward's default chunk grows to a multiple of the forward's


def test_few_rows_take_their_own_launch_shapes():
    from mambadyn.scan.triton_tuning import (BWD_TUNING, BWD_TUNING_FEW_ROWS, FWD_TUNING, FWD_TUNING_FEW_ROWS,
                                             FWD_TUNING_MID_ROWS, _tunings)

    assert _tunings(2, rows=8 * 1536, sms=132) == (FWD_TUNING[2], BWD_TUNING[2])  # the benchmark fills an H100
    assert _tunings(2, rows=2 * 2560, sms=132) == (FWD_TUNING_MID_ROWS, BWD_TUNING[2])
    assert _tunings(2, rows=768, sms=132, need_grad=False)[0] == FWD_TUNING_FEW_ROWS[False]
    for size in (2, 4):
        fwd, bwd = _tunings(size, rows=1536, sms=132, need_grad=True)
        assert fwd == FWD_TUNING_FEW_ROWS[True] and bwd == BWD_TUNING_FEW_ROWS[size]
        assert bwd.chunk % fwd.chunk == 0  # the backward restarts from the forward's saved states
    assert _tunings(2, block_d=8, rows=768, sms=132)[0].block_d == 8  # a knob given wins
    assert _tunings(2, bwd_chunk=128, rows=768, sms=132)[1] == BWD_TUNING[2]  # ... the table's other shape


def test_the_shuffle_flip_is_compiled_only_where_its_layout_holds():
    from mambadyn.scan.triton_tuning import bwd_meta, _tunings

    bf16 = _tunings(2)[1]
    assert bwd_meta(bf16, 2, 16, True, aligned=True)["FLIP_RUNS"]
    assert not bwd_meta(bf16, 2, 16, True, aligned=False)["FLIP_RUNS"]  # L or a stride not a multiple of 16
    assert not bwd_meta(bf16, 2, 16, False, aligned=True)["FLIP_RUNS"]  # the interpreter: no inline PTX
    assert not bwd_meta(_tunings(4)[1], 4, 16, True, aligned=True)["FLIP_RUNS"]  # float32: 4 steps a thread
    for knobs in (dict(bwd_num_warps=2), dict(bwd_chunk=512), dict(bwd_flip_runs=False)):  # 512: 64 lanes a row
        assert not bwd_meta(_tunings(2, **knobs)[1], 2, 16, True, aligned=True)["FLIP_RUNS"], knobs
    for knobs in (dict(bwd_chunk=256), dict(bwd_block_d=1, bwd_chunk=256)):  # 32 lanes a row
        assert bwd_meta(_tunings(2, **knobs)[1], 2, 16, True, aligned=True)["FLIP_RUNS"], knobs


def test_knobs_override_the_tables_and_reach_the_launch():
    from mambadyn.scan.triton_tuning import BWD_TUNING, FWD_TUNING, bwd_meta, fwd_meta, _tunings

    fwd, bwd = _tunings(4, rows=8 * 1536, sms=132)
    assert (fwd, bwd) == (FWD_TUNING[4], BWD_TUNING[4])
    fwd, bwd = _tunings(4, rows=8 * 1536, sms=132, wide=False, maxnreg=0, bwd_g_in_memory=False, bwd_maxnreg=0)
    assert not fwd.wide and not fwd.maxnreg and not bwd.g_in_memory and not bwd.maxnreg
    assert "maxnreg" not in fwd_meta(fwd, bwd, 4, 16, True, False)
    fwd, bwd = _tunings(4, wide=True, maxnreg=160, bwd_maxnreg=200)
    meta = fwd_meta(fwd, bwd, 4, 16, True, False)
    assert meta["WIDE"] and meta["V"] == 8 and meta["maxnreg"] == 160
    assert bwd_meta(bwd, 4, 16, False)["maxnreg"] == 200
    assert not fwd_meta(*_tunings(2, wide=True), 2, 16, True, False)["WIDE"]  # 16-bit tiles are wide already


UNUSED_OUTPUT_SCRIPT = "scan_unused_output"


def test_an_unused_output_needs_no_gradient_in_the_interpreter():
    worst = run_script(UNUSED_OUTPUT_SCRIPT, interpret=True)
    assert worst["out"] < 2e-3 and worst["last"] < 2e-3, worst


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled kernel needs CUDA")

GPU_CASES = [
    Case(b, d, L, n, dtype=dt)
    for dt in ("float32", "bfloat16")
    for (b, d, L, n) in [(1, 37, 1, 4), (2, 64, 7, 8), (1, 37, 129, 16), (3, 48, 1000, 32), (2, 1536, 257, 16),
                         (1, 5, 2049, 16)]
] + [
    Case(2, 33, 100, 16, has_z=False, has_D=False, has_bias=False, softplus=False),
    Case(2, 33, 100, 16, initial_state=True, last_state=True),
    Case(2, 33, 100, 12, dtype="float16"),
    # inference, whose launch shapes differ for few rows (batch * d) and for many
    Case(1, 37, 1000, 16, dtype="bfloat16", initial_state=True, last_state=True, forward_only=True),
    Case(8, 1536, 300, 16, dtype="bfloat16", forward_only=True),
    Case(8, 1536, 300, 16, dtype="bfloat16"),  # the launch shapes of a full GPU
    Case(8, 1536, 512, 16, dtype="bfloat16"),  # ... with L and the strides aligned (the backward's shuffle flip)
    Case(3, 48, 1024, 32, dtype="bfloat16", initial_state=True, last_state=True),
]


@cuda
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"{c.dtype}-b{c.batch}-d{c.d}-L{c.L}-n{c.n}")
def test_kernel_matches_reference_on_cuda(case):
    poison_allocator("cuda")
    assert_close(compare_with_reference("triton", case, device="cuda"))


@cuda
@pytest.mark.parametrize("g_in_memory", [False, True])
def test_both_adjoint_carries_match_reference_on_cuda(g_in_memory):
    poison_allocator("cuda")
    for case in (Case(2, 64, 300, 16, dtype="bfloat16", last_state=True), Case(1, 37, 129, 16)):
        assert_close(compare_with_reference("triton", case, device="cuda", bwd_g_in_memory=g_in_memory))


@cuda
@pytest.mark.parametrize("flip_runs", [True, False])
@pytest.mark.parametrize("block_d,chunk", [(2, 128), (1, 256), (2, 256)])
def test_both_reverse_scans_match_reference_on_cuda(flip_runs, block_d, chunk):
    # 16-bit backward: mirror-lane shuffles (_flip_runs, 16 or 32 lanes a row) where L, the strides and the
    # pointers are aligned to 16 (L 256, 1024 here), Triton's reverse scan elsewhere (L 300, 1000) and where
    # switched off
    from mambadyn.scan import triton_kernels

    poison_allocator("cuda")
    triton_kernels.bwd_kernel._compiled.clear()
    for case in (Case(2, 64, 256, 16, dtype="bfloat16", last_state=True), Case(1, 37, 1024, 16, dtype="float16"),
                 Case(2, 64, 300, 16, dtype="bfloat16"), Case(1, 37, 1000, 16, dtype="float16")):
        assert_close(compare_with_reference("triton", case, device="cuda", bwd_flip_runs=flip_runs,
                                            bwd_block_d=block_d, bwd_chunk=chunk))
    used = {dict(key[1])["FLIP_RUNS"] for key in triton_kernels.bwd_kernel._compiled}
    assert used == ({True, False} if flip_runs else {False})


@cuda
def test_wide_float32_forward_matches_reference_on_cuda():
    poison_allocator("cuda")
    for case in (Case(2, 1536, 257, 16), Case(1, 37, 1000, 16, initial_state=True, last_state=True)):
        assert_close(compare_with_reference("triton", case, device="cuda", block_d=16, chunk=64, num_warps=2,
                                            wide=True, maxnreg=168))


@cuda
def test_direct_launches_give_the_same_results_on_cuda():
    from mambadyn.scan import triton_kernels
    from mambadyn.scan.launch import Launcher

    # the first call of a shape compiles through Triton, the repeat launches the compiled kernel directly
    # (mambadyn.scan.launch.Launcher); tests/test_launch.py checks which launches go which way
    poison_allocator("cuda")
    assert isinstance(triton_kernels.fwd_kernel, Launcher)
    for case in (Case(2, 64, 300, 16, dtype="bfloat16"), Case(1, 37, 129, 16)):
        for _ in range(2):
            assert_close(compare_with_reference("triton", case, device="cuda"))
    assert triton_kernels.fwd_kernel._compiled and triton_kernels.bwd_kernel._compiled


@cuda
def test_auto_picks_triton_on_cuda():
    from mambadyn.scan.registry import get_backend

    assert get_backend("auto", torch.zeros(1, 1, 1, device="cuda")).name == "triton"
    assert get_backend("auto", torch.zeros(1, 1, 1, device="cuda", dtype=torch.float64)).name != "triton"


COMPILE_SCRIPT = "scan_compile"


def _compile_check(interpret: bool):
    r = run_script(COMPILE_SCRIPT, interpret)
    assert r["breaks"] == 0 and r["graphs"] == 1, r
    assert r["err"] < 1e-5, r  # the compiled model computes what the eager one does, gradients included


def test_torch_compile_runs_the_triton_scan_without_graph_breaks_in_the_interpreter():
    """The scan is a custom op with a fake implementation under torch.compile: one graph, no break."""
    _compile_check(interpret=True)


@cuda
def test_torch_compile_runs_the_triton_scan_without_graph_breaks_on_cuda():
    _compile_check(interpret=False)


def test_launch_arithmetic_equals_tritons():
    # the host-side copies of triton.cdiv and triton.next_power_of_2 (theirs cost ~1.9 us a call)
    import triton

    from mambadyn.scan.launch import cdiv, next_power_of_2

    for a in range(0, 300):
        assert next_power_of_2(a) == triton.next_power_of_2(a), a
        for b in (1, 2, 3, 8, 64, 128):
            assert cdiv(a, b) == triton.cdiv(a, b), (a, b)


@pytest.mark.parametrize("L, aligned", [(64, True), (63, False)])
def test_the_backward_reports_what_triton_specializes_on(monkeypatch, L, aligned):
    # the shuffle flip's precondition (bwd_meta's ``aligned``) as the backward computes it, kernels stubbed
    import mambadyn.scan.triton_scan as ts
    from tests.support.stubs import NoKernel

    seen = []
    meta = ts.bwd_meta
    monkeypatch.setattr(ts, "fwd_kernel", NoKernel())
    monkeypatch.setattr(ts, "bwd_kernel", NoKernel())
    monkeypatch.setattr(ts, "bwd_meta", lambda *a, **k: seen.append(k["aligned"]) or meta(*a, **k))
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # only so the backend takes CPU tensors: no kernel runs
    b, d, n = 2, 32, 16
    xs = [torch.randn(*s, dtype=torch.bfloat16, requires_grad=True)
          for s in ((b, d, L), (b, d, L), (b, n, L), (b, n, L), (b, d, L))]
    A = -torch.rand(d, n, requires_grad=True)
    out = ts.selective_scan_triton(xs[0], xs[1], A, xs[2], xs[3], z=xs[4], delta_softplus=True)
    out.backward(torch.ones_like(out))
    assert seen == [aligned]
