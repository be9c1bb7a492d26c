"""Child of test_vl_ddp.py: stage 1 for two steps on a tiny world, under torchrun or alone.

argv: OUT_DIR DATA_DIR FLORENCE2_DIR
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

from florence_vl.florence2.checkpoint import load_florence2  # noqa: E402
from florence_vl.train.vl import VLRecipe, build_tokenizer, build_vl, run_stage1, world_texts  # noqa: E402
from florence_vl.vl.nano_llm import build_llm  # noqa: E402
from florence_vl.vl.processor import VLProcessor  # noqa: E402

out, data, florence2 = sys.argv[1:4]
recipe = VLRecipe.from_dict({
    "out_dir": out, "florence2": florence2, "llm_size": "tiny", "tokenizer_vocab": 300,
    "stage1": {"data": os.path.join(data, "llava_pretrain.json"), "batch_size": 4, "max_length": 96,
               "loop": {"steps": 2, "warmup_steps": 1, "log_every": 1, "save_every": 100, "lr": 1e-2,
                        "grad_clip": 0.0}}})
tokenizer = build_tokenizer(recipe, world_texts(data))
torch.manual_seed(0)
vision = load_florence2(florence2)
model = build_vl(recipe, build_llm(tokenizer, "tiny"), vision, "plain")
for module in model.modules():  # no dropout: both runs must draw nothing at random
    for name in ("dropout", "attention_dropout", "activation_dropout"):
        if isinstance(getattr(module, name, None), float):
            setattr(module, name, 0.0)
processor = VLProcessor(tokenizer, vision.image_processor, "plain", max_length=96)
run_stage1(model, processor, recipe.stage1, out, progress=False)
