"""clip-prompt-bench: a benchmark harness for CLIP prompt learning (CoOp, CoCoOp, KgCoOp, ...)."""

__version__ = "0.1.0"

import os as _os

# Deterministic cuBLAS (bench.engine.loop.deterministic_cuda): cuBLAS reads this when CUDA starts, so it is set on import,
# before any CUDA work. BENCH_DETERMINISTIC=0 leaves it alone.
if _os.environ.get("BENCH_DETERMINISTIC", "1").strip().lower() not in ("0", "false", "off", "no"):
    _os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
