"""The models this lmms-eval plugin adds: name -> class, the class living in the module of that name."""

AVAILABLE_MODELS = {"florence_vl": "FlorenceVLLmms"}
