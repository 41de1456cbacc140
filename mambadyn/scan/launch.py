"""Integer arithmetic for the host side of kernel launches (grid sizes, power-of-two block sizes).

``triton.cdiv`` and ``triton.next_power_of_2`` are constexpr functions in recent Triton (3.8 measured): called
from Python they cost about 1.9 us each, 21x these (``benchmarks/scan_cpu_overhead.py``), and the fused model
calls them about 15 times per layer in a forward and backward."""

from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive b."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n, for n >= 1 (0 for 0, as Triton's)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0
