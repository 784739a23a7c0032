"""The Triton family of ops (glu_fused::triton_*): `ops` (their implementations, which the
C++ plans of glu_fused._C check and lay out), `launch` (one kernel launch per call),
`kernels` and `math` (Triton). Triton itself is imported at the first call.

With $TRITON_INTERPRET=1 when glu_fused is imported, the ops also run CPU tensors, through
Triton's interpreter: how the kernels are tested on machines without a GPU.
"""

import importlib.util
import os

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETER = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")
