"""Build mamba-ssm's CUDA selective scan (only that extension, only for this GPU's architecture)
from its PyPI sdist, for the side-by-side benchmark in scan_gpu.py.

    python benchmarks/build_mamba_ssm.py .whl/mamba_ssm-2.3.2.post1.tar.gz [--build-dir /tmp/mamba_ssm_build]

The sdist must be carried to the device (it has no network). ``load_selective_scan_fn`` in
scan_gpu.py picks the built module up without rebuilding.
"""

from __future__ import annotations

import argparse
import os
import tarfile
import time
from pathlib import Path

FLAGS = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
         "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
         "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
         "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math", "-lineinfo"]


def source_dir(sdist: str, into: str) -> Path:
    with tarfile.open(sdist) as tf:
        root = tf.getnames()[0].split("/")[0]
        tf.extractall(into, filter="data")
    return Path(into) / root


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sdist")
    ap.add_argument("--build-dir", default="/tmp/mamba_ssm_build")
    args = ap.parse_args()
    import torch
    from torch.utils.cpp_extension import load

    os.makedirs(args.build_dir, exist_ok=True)
    src = source_dir(args.sdist, args.build_dir)
    cc = "".join(map(str, torch.cuda.get_device_capability()))
    csrc = src / "csrc" / "selective_scan"
    sources = [str(csrc / "selective_scan.cpp")] + sorted(str(p) for p in csrc.glob("selective_scan_*.cu"))
    t0 = time.time()
    load(name="selective_scan_cuda", sources=sources, extra_cflags=["-O3", "-std=c++17"],
         extra_cuda_cflags=FLAGS + [f"-gencode=arch=compute_{cc},code=sm_{cc}"], extra_include_paths=[str(csrc)],
         build_directory=args.build_dir, verbose=True)
    (Path(args.build_dir) / "SOURCE").write_text(str(src))
    print(f"built selective_scan_cuda in {time.time() - t0:.0f} s at {args.build_dir}")


if __name__ == "__main__":
    main()
