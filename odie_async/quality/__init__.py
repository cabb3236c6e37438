"""The quality gate: checks that keep garbage out of training data (``odie filter``, the pipeline's filter stage)."""

from .gate_config import GateConfig, load_gate_config
from .gate import Gate, Verdict

__all__ = ["Gate", "GateConfig", "Verdict", "load_gate_config"]
