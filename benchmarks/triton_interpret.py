"""Run the Triton kernels in Triton's CPU interpreter (TRITON_INTERPRET=1), for tests without a GPU
(a developer's tool, not part of the package).

Triton 3.6's interpreter turns scalar tensors into Python ints with ``int(array)``, which NumPy >= 2.4
refuses for the 1-element arrays it uses; this wraps that one conversion. Import it before the
kernels, with TRITON_INTERPRET=1 already set."""

from __future__ import annotations

import os


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
