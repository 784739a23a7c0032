"""The compiled extension, glu_fused._C, loaded once: the ops, their CPU and CUDA kernels and
the front door's fast calls.

Without it everything still runs, on the reference, which is slow: so its absence is said
once, at import, with the reason and the command that builds it. A Python-only copy of the
package (no compiler at install) and an extension built against another torch release (it
fails to load, or loads but was built for another version) are the usual causes.
"""

from __future__ import annotations

import importlib.machinery
import os
import warnings

import torch

REBUILD = "pip install --no-build-isolation ."  # in the source tree; -e for an editable install

try:
    from . import _C
except ImportError as error:
    _C = None
    here = os.path.dirname(os.path.abspath(__file__))
    present = any(
        os.path.exists(os.path.join(here, "_C" + suffix))
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
    )
    UNAVAILABLE = (
        f"the compiled extension is present but does not load ({error})"
        if present
        else f"the compiled extension is not available ({error})"
    )
else:
    UNAVAILABLE = None


def _built_for_another_torch() -> str | None:
    if _C is None or _C.TORCH_VERSION == torch.__version__:
        return None
    return f"glu_fused._C was built against torch {_C.TORCH_VERSION}, not {torch.__version__}"


if UNAVAILABLE is not None:
    warnings.warn(
        f"glu_fused: {UNAVAILABLE}; every call runs on the pure-PyTorch reference, several "
        f"times slower. Build it against this torch: {REBUILD}",
        RuntimeWarning,
        stacklevel=2,
    )
elif (mismatch := _built_for_another_torch()) is not None:
    warnings.warn(
        f"glu_fused: {mismatch}; it may misbehave. Rebuild it: {REBUILD}",
        RuntimeWarning,
        stacklevel=2,
    )
