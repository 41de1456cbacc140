"""Build mamba-ssm's selective scan and causal-conv1d's conv (the two CUDA extensions of mamba-ssm's fastest
path) from their PyPI sdists, only for this GPU's architecture, for the side-by-side benchmarks
(scan_gpu.py, model_gpu.py). The device has no network, so the sdists are carried:

    python benchmarks/build_mamba_ssm.py .whl [--build-dir /tmp/mamba_ssm_build] [--only selective_scan_cuda]

``.whl`` (git-ignored) holds mamba_ssm-*.tar.gz and causal_conv1d-*.tar.gz, fetched where there is a network:

    MAMBA_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-binary :all: --no-build-isolation -d .whl \
        mamba-ssm==2.3.2.post1
    CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-binary :all: --no-build-isolation -d .whl \
        causal-conv1d==1.7.0

On an H200 the builds took 150-165 s (selective scan) and 385-395 s (causal conv), side by side.
The two extensions build in parallel, each
with ninja; the Python packages are installed without their CUDA builds (pip, no network, no deps) into
``<build-dir>/site``. ``use_build(build_dir)`` puts all of it on sys.path. An extension already built there
(``*.so``, also one carried in from an earlier machine of the same image) is not built again.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

FLAGS = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
         "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
         "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
         "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math", "-lineinfo"]
# extension name -> (sdist prefix, source folder inside it, the sources' globs)
EXTENSIONS = {
    "selective_scan_cuda": ("mamba_ssm", "csrc/selective_scan", ["selective_scan.cpp", "selective_scan_*.cu"]),
    "causal_conv1d_cuda": ("causal_conv1d", "csrc", ["causal_conv1d.cpp", "causal_conv1d*.cu"]),
}
ENV = {"MAMBA_SKIP_CUDA_BUILD": "TRUE", "MAMBA_FORCE_BUILD": "TRUE", "CAUSAL_CONV1D_SKIP_CUDA_BUILD": "TRUE",
       "CAUSAL_CONV1D_FORCE_BUILD": "TRUE"}


def _sdist(folder: Path, prefix: str) -> Path:
    found = sorted(folder.glob(f"{prefix}-*.tar.gz"))
    if not found:
        raise SystemExit(f"no {prefix}-*.tar.gz in {folder}: download it with pip download --no-binary :all:")
    return found[-1]


def _unpack(sdist: Path, into: Path) -> Path:
    with tarfile.open(sdist) as tf:
        root = tf.getnames()[0].split("/")[0]
        tf.extractall(into, filter="data")
    return into / root


def _build_one(name: str, src: Path, build_dir: Path) -> None:
    import torch
    from torch.utils.cpp_extension import load

    _, sub, globs = EXTENSIONS[name]
    csrc = src / sub
    sources = sorted({str(p) for g in globs for p in csrc.glob(g)})
    cc = "".join(map(str, torch.cuda.get_device_capability()))
    out = build_dir / name
    out.mkdir(parents=True, exist_ok=True)
    load(name=name, sources=sources, extra_cflags=["-O3", "-std=c++17"],
         extra_cuda_cflags=FLAGS + [f"-gencode=arch=compute_{cc},code=sm_{cc}"], extra_include_paths=[str(csrc)],
         build_directory=str(out), verbose=False)


def built(build_dir: str | Path, name: str) -> Path | None:
    found = sorted((Path(build_dir) / name).glob(f"{name}*.so"))
    return found[0] if found else None


def use_build(build_dir: str | Path) -> None:
    """Put the built extensions and the installed packages on sys.path (and on PYTHONPATH for children)."""
    build_dir = Path(build_dir)
    paths = [str(build_dir / "site")] + [str(build_dir / name) for name in EXTENSIONS]
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


def build(sdists: str | Path, build_dir: str | Path, only: list[str] | None = None) -> dict:
    """Install both packages (Python only) and build the missing extensions (those in ``only``, if given) in
    parallel. Returns seconds taken per step."""
    sdists, build_dir = Path(sdists), Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    times = {}
    t0 = time.time()
    pkgs = [str(_sdist(sdists, prefix)) for prefix, _, _ in EXTENSIONS.values()]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(build_dir / "site"), *pkgs],
                   check=True, env={**os.environ, **ENV})
    times["pip install (Python only)"] = time.time() - t0
    procs = {}
    for name, (prefix, _, _) in EXTENSIONS.items():
        if built(build_dir, name) or (only and name not in only):
            continue
        src = _unpack(_sdist(sdists, prefix), build_dir / "src")
        procs[name] = (time.time(), subprocess.Popen(
            [sys.executable, __file__, "--one", name, str(src), str(build_dir)]))
    for name, (start, proc) in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"building {name} failed (exit {proc.returncode})")
        times[f"build {name}"] = time.time() - start
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sdists", nargs="?", default=".whl")
    ap.add_argument("--build-dir", default="/tmp/mamba_ssm_build")
    ap.add_argument("--only", action="append", choices=list(EXTENSIONS),
                    help="build just this extension (scan_gpu.py needs only selective_scan_cuda); repeatable")
    ap.add_argument("--one", nargs=3, metavar=("NAME", "SRC", "BUILD_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        name, src, build_dir = args.one
        _build_one(name, Path(src), Path(build_dir))
        return
    for step, seconds in build(args.sdists, args.build_dir, args.only).items():
        print(f"{step}: {seconds:.0f} s")


if __name__ == "__main__":
    main()
