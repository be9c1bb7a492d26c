"""lmms-eval's "florence_vl" model (see florence_vl/eval/lmms_adapter.py)."""

from ...lmms_adapter import FlorenceVLLmms

__all__ = ["FlorenceVLLmms"]
