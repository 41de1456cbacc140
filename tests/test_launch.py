"""mambadyn.scan.launch.Launcher: which launches go straight to the compiled kernel, and with what arguments.
A stand-in JITFunction records what Triton's own path and the direct path receive (no GPU needed); the CUDA
test (in test_triton_scan.py) checks the real scan kernels launched directly against the reference."""

from __future__ import annotations

import inspect

import pytest
import torch

from mambadyn.scan import launch


class _Compiled:
    def __init__(self, log):
        self.log, self.function, self.packed_metadata = log, "fn", "meta"

    def run(self, g0, g1, g2, stream, function, packed, metadata, enter, exit_, *args):
        self.log.append(("direct", (g0, g1, g2), stream, args))


class _Jit:
    """Enough of a JITFunction: its launch path compiles (once per call here) and records."""

    def __init__(self):
        self.log, self.device_caches = [], {}

        def kernel(x_ptr, y_ptr, n, stride, BLOCK=16, FLAG=False):
            pass

        self.signature = inspect.signature(kernel)

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.log.append(("triton", grid, args, kwargs))
            return _Compiled(self.log)
        return run


class _Driver:
    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return 1234


@pytest.fixture
def jit(monkeypatch):
    monkeypatch.setattr(launch, "_driver", lambda: _Driver())
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return _Jit()


def test_a_repeated_specialization_launches_the_compiled_kernel_directly(jit):
    k = launch.Launcher(jit)
    x, y = torch.zeros(64), torch.zeros(64)
    k[(3,)](x, y, 64, 32, BLOCK=32, num_warps=2)
    k[(5, 2)](x, y, 48, 16, BLOCK=32, num_warps=2)  # same alignment classes: 48 and 64 are multiples of 16
    assert [e[0] for e in jit.log] == ["triton", "direct"]
    _, grid, stream, args = jit.log[1]
    assert grid == (5, 2, 1) and stream == 1234
    # positional arguments, then every later parameter: the given constexpr, then the default
    assert args == (x, y, 48, 16, 32, False)


@pytest.mark.parametrize("change", ["int one", "int not a multiple of 16", "dtype", "misaligned", "none",
                                    "constexpr", "option", "wide int"])
def test_anything_triton_specializes_on_takes_its_own_path(jit, change):
    k = launch.Launcher(jit)
    x, y = torch.zeros(64), torch.zeros(64)
    args, kwargs = [x, y, 64, 32], dict(BLOCK=32, num_warps=2)
    k[(1,)](*args, **kwargs)
    if change == "int one":
        args[3] = 1
    elif change == "int not a multiple of 16":
        args[2] = 63
    elif change == "dtype":
        args[0] = torch.zeros(64, dtype=torch.bfloat16)
    elif change == "misaligned":
        args[0] = x[1:]  # 4 bytes past a 16-byte boundary
    elif change == "none":
        args[1] = None
    elif change == "constexpr":
        kwargs["BLOCK"] = 64
    elif change == "option":
        kwargs["num_warps"] = 4
    elif change == "wide int":
        args[2] = 1 << 32
    k[(1,)](*args, **kwargs)
    assert [e[0] for e in jit.log] == ["triton", "triton"]
    k[(1,)](*args, **kwargs)  # and is cached under its own key
    assert [e[0] for e in jit.log] == ["triton", "triton", "direct"]


def test_the_interpreter_and_launch_hooks_always_take_tritons_path(jit, monkeypatch):
    k = launch.Launcher(jit)
    x = torch.zeros(64)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for _ in range(2):
        k[(1,)](x, x, 64, 32)
    monkeypatch.delenv("TRITON_INTERPRET")
    from triton import knobs

    hooks = knobs.runtime.launch_enter_hook
    if hasattr(hooks, "add"):  # Triton 3.5+: a chain of hooks
        def hook(*a):
            return None

        hooks.add(hook)
        try:
            for _ in range(2):
                k[(1,)](x, x, 64, 32)
        finally:
            hooks.remove(hook)
    assert all(e[0] == "triton" for e in jit.log)


def test_unknown_argument_kinds_take_tritons_path(jit):
    k = launch.Launcher(jit)
    for _ in range(2):
        k[(1,)](object(), None, 64, 32)
    assert [e[0] for e in jit.log] == ["triton", "triton"]
