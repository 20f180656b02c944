"""clip-prompt-bench: a benchmark harness for CLIP prompt learning (CoOp, CoCoOp, KgCoOp, ...)."""

__version__ = "0.1.0"
