"""Run the Triton kernels in Triton's CPU interpreter (TRITON_INTERPRET=1), for tests without a GPU
(a developer's tool, not part of the package).

Triton 3.6's interpreter turns scalar tensors into Python ints with ``int(array)``, which NumPy >= 2.4
refuses for the 1-element arrays it uses; this wraps that one conversion. Import it before the
kernels, with TRITON_INTERPRET=1 already set. ``run_script`` runs one of the scripts in tests/scripts in a
fresh process, interpreted or compiled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def enable() -> None:
    os.environ["TRITON_INTERPRET"] = "1"
    from triton.runtime import interpreter

    if getattr(interpreter, "_mambadyn_patched", False):
        return
    original = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patched
    interpreter._mambadyn_patched = True


def enable_if_asked() -> None:
    """The first thing a script under tests/scripts does: patch the interpreter where the run asks for it."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        enable()


ROOT = Path(__file__).resolve().parents[2]  # the repository
SCRIPTS = ROOT / "tests" / "scripts"


def run_script(name: str, interpret: bool, args: tuple[str, ...] = (), timeout: float = 900):
    """Run ``tests/scripts/<name>.py`` in a fresh Python with the repository on its path, in Triton's
    interpreter if ``interpret`` (it must be on before triton compiles anything, hence the fresh process),
    and return the JSON its last printed line holds. A failure raises with the end of its stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"the script failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
