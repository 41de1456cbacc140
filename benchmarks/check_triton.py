"""Device check of the Triton scan against the float64 reference: many shapes and flag sets, fp32,
bf16 and fp16, forward and every gradient, with the CUDA allocator poisoned before each case.

    python benchmarks/check_triton.py [--json results/triton_check.json]

Prints one row per case with the worst relative error and exits non-zero if any case fails.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))  # the repo root: tests.support
from tests.support.poison import poison_allocator  # noqa: E402

from mambadyn.scan.verify import Case, compare_with_reference


def cases():
    shapes = [(1, 37, 1, 4), (1, 37, 31, 8), (2, 64, 129, 16), (1, 1536, 513, 16), (3, 48, 1000, 32),
              (2, 17, 4097, 16), (8, 256, 2048, 16), (1, 5, 8191, 4)]
    for (b, d, L, n), dt in itertools.product(shapes, ("float32", "bfloat16")):
        yield Case(b, d, L, n, dtype=dt)
    for flags in itertools.product((False, True), repeat=4):
        has_z, has_D, has_bias, softplus = flags
        yield Case(2, 33, 77, 16, has_z=has_z, has_D=has_D, has_bias=has_bias, softplus=softplus)
    yield Case(2, 33, 100, 16, initial_state=True, last_state=True)
    yield Case(2, 33, 100, 16, dtype="bfloat16", initial_state=True, last_state=True)
    yield Case(2, 40, 300, 12, dtype="float16")
    # inference (no grad) takes its own launch shapes when batch * d is small: each of them
    for b, d, L in [(1, 37, 1000), (1, 768, 2049), (2, 2560, 513), (8, 1536, 300)]:
        for dt in ("float32", "bfloat16"):
            yield Case(b, d, L, 16, dtype=dt, initial_state=True, last_state=True, forward_only=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default="results/triton_check.json")
    ap.add_argument("--opts", default="{}", help='kernel options as JSON, e.g. \'{"block_d": 8, "chunk": 64}\'')
    args = ap.parse_args()
    opts = json.loads(args.opts)
    if not torch.cuda.is_available():
        sys.exit("check_triton.py needs a CUDA device")
    rows, failed = [], 0
    print(f"{'dtype':<9} {'b':>2} {'d':>5} {'L':>5} {'n':>3} {'flags':<22} {'worst':>9} {'where':<8} ok")
    for case in cases():
        poison_allocator("cuda")
        r = compare_with_reference("triton", case, device="cuda", **opts)
        worst = max(r["errors"], key=r["errors"].get)
        ok = not r["nonfinite"] and r["errors"][worst] <= r["tolerance"]
        failed += not ok
        flags = "".join(c for c, on in zip("zDbSilf", (case.has_z, case.has_D, case.has_bias, case.softplus,
                                                        case.initial_state, case.last_state, case.forward_only))
                        if on)
        print(f"{case.dtype:<9} {case.batch:>2} {case.d:>5} {case.L:>5} {case.n:>3} {flags:<22} "
              f"{r['errors'][worst]:>9.2e} {worst:<8} {'yes' if ok else 'NO ' + str(r['nonfinite'])}")
        rows.append({**r, "ok": ok})
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=2)
    print(f"{len(rows) - failed}/{len(rows)} cases within tolerance; wrote {args.json}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
