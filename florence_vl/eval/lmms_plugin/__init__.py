"""lmms-eval plugin package: `LMMS_EVAL_PLUGINS=florence_vl.eval.lmms_plugin python -m lmms_eval --model florence_vl ...`.

lmms-eval imports `<plugin>.models`, reads its AVAILABLE_MODELS ({name: class name}) and loads the class from
`<plugin>.models.<name>`; it also adds `<plugin>.tasks` to its task search path (no tasks of our own yet).
The adapter itself: florence_vl/eval/lmms_adapter.py.
"""
