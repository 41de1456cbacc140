"""The host side of kernel launches, where a short call's time goes.

``cdiv`` and ``next_power_of_2``: ``triton.cdiv`` and ``triton.next_power_of_2`` are constexpr functions in
recent Triton, costly to call from Python, and the fused model calls them about 15 times per layer in a
forward and backward (timings: ``results/scan_cpu_overhead.json``). ``Launcher`` (``@launcher``): a compiled Triton kernel launched without Triton's per-call
argument binding."""

from __future__ import annotations

import os


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive b."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n, for n >= 1 (0 for 0, as Triton's)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


class Launcher:
    """``kernel[grid](*args, **kwargs)`` for a ``@triton.jit`` kernel, with less host work than Triton's.

    Triton's launch binds and specializes every argument and looks the kernel up by a string key on each
    call, which a short sequence's kernels do not hide (measured in ``results/scan_gpu_call.json``, by
    ``benchmarks/scan_gpu_call.py``). Here the compiled kernel Triton
    returned is kept under a key that holds everything its specialization reads (each tensor's dtype and
    16-byte alignment; each integer's equality to 1, divisibility by 16 and width; the type of anything
    else; the keyword arguments: constexprs and launch options) and is launched directly the next time that
    key recurs. A first sight of a key, the interpreter, a launch hook (profilers) or arguments of another
    kind take Triton's own path, so the result never differs from ``kernel[grid](...)``."""

    def __init__(self, kernel):
        self.kernel = kernel
        self._compiled: dict = {}
        self._params = None

    def __getattr__(self, name):  # arg_names, fn, ...: the kernel's own
        return getattr(self.kernel, name)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self._launch(grid, args, kwargs)

    def _launch(self, grid, args, kwargs):
        key = self._key(args, kwargs)
        hit = None if key is None else self._compiled.get(key)
        if hit is None:
            compiled = self.kernel[grid](*args, **kwargs)
            if key is not None and compiled is not None:
                self._compiled[key] = compiled
            return compiled
        device = _driver().get_current_device()
        grid = tuple(grid) + (1, 1)
        hit.run(grid[0], grid[1], grid[2], _driver().get_current_stream(device), hit.function,
                hit.packed_metadata, None, None, None, *args, *self._tail(len(args), kwargs))
        return hit

    def _key(self, args, kwargs):
        if not _direct_launch_possible(self.kernel):
            return None
        try:
            return _driver().get_current_device(), tuple(kwargs.items()), tuple(map(_arg_key, args))
        except TypeError:  # an argument of a kind the key does not cover, or an unhashable keyword value
            return None

    def _tail(self, given: int, kwargs: dict) -> list:
        # the values of the parameters after the positional ones, in order (the launcher skips constexprs)
        if self._params is None:
            self._params = [(p.name, p.default) for p in self.kernel.signature.parameters.values()]
        return [kwargs.get(name, default) for name, default in self._params[given:]]


def launcher(kernel) -> Launcher:
    """Decorator: ``@launcher`` over ``@triton.jit``."""
    return Launcher(kernel)


_I32, _I64 = 1 << 31, 1 << 63


def _arg_key(a):
    # what Triton's specialization reads of one argument (see Launcher)
    if hasattr(a, "data_ptr"):  # tensors, and Triton's tensor-like wrappers
        return (a.dtype, a.data_ptr() % 16 == 0)
    if isinstance(a, int) and not isinstance(a, bool):
        return (a == 1, a % 16 == 0, -_I32 <= a < _I32, a < _I64)
    if a is None or isinstance(a, (bool, float)):
        return type(a)
    raise TypeError(f"no launch key for {type(a).__name__}")


_DRIVER = None
_KNOBS = None


def _driver():
    global _DRIVER
    if _DRIVER is None:
        from triton.runtime.driver import driver

        _DRIVER = driver
    return _DRIVER.active


def _direct_launch_possible(kernel) -> bool:
    global _KNOBS
    if os.environ.get("TRITON_INTERPRET") == "1" or not hasattr(kernel, "device_caches"):
        return False
    if _KNOBS is None:
        try:
            from triton import knobs
        except ImportError:  # Triton before 3.4 keeps its hooks elsewhere: its own path
            _KNOBS = False
        else:
            _KNOBS = knobs
    if _KNOBS is False:
        return False
    # a hook is None, or (Triton 3.5+) a chain that may be empty
    hooks = _KNOBS.runtime.launch_enter_hook, _KNOBS.runtime.launch_exit_hook
    return all(h is None or getattr(h, "calls", None) == [] for h in hooks)
