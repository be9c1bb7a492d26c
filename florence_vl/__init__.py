"""florence-vl: Florence (UniCL), Florence-2 and Florence-VL on transformers.

    from florence_vl import Florence2
    florence = Florence2.from_pretrained("path/to/checkpoint")       # native or original layout
    [result] = florence.run(["photo.jpg"], "<OD>")
    result.output  # {"bboxes": [[x0, y0, x1, y1], ...], "labels": [...], "scores": [...]}

Names are imported lazily so that `import florence_vl` (and `florence-vl --help`) stay fast.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Florence2": "florence_vl.florence2.runner",
    "TaskRequest": "florence_vl.florence2.runner",
    "TaskResult": "florence_vl.florence2.results",
    "TASKS": "florence_vl.florence2.tasks",
    "get_task": "florence_vl.florence2.tasks",
    "build_prompt": "florence_vl.florence2.tasks",
    "parse_output": "florence_vl.florence2.postprocess",
    "encode_box": "florence_vl.florence2.coordinates",
    "encode_quad": "florence_vl.florence2.coordinates",
    "encode_polygon": "florence_vl.florence2.coordinates",
    "decode_points": "florence_vl.florence2.coordinates",
    "load_florence2": "florence_vl.florence2.checkpoint",
    "UniCLModel": "florence_vl.florence.api",
    "FlorenceVL": "florence_vl.vl.chat",
    "load_florence_vl": "florence_vl.vl.checkpoint",
    "convert_checkpoint": "florence_vl.florence2.checkpoint",
    "coco_results": "florence_vl.florence2.export",
    "write_json": "florence_vl.florence2.export",
    "draw_result": "florence_vl.viz",
    "load_image": "florence_vl.images",
    "FlorenceVLError": "florence_vl.errors",
    "InputError": "florence_vl.errors",
    "CheckpointError": "florence_vl.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'florence_vl' has no attribute {name!r}")
