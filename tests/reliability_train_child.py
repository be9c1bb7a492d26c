"""The training run that test_reliability_training.py kills with SIGKILL in the middle of a checkpoint save.

    python tests/reliability_train_child.py TOKENIZER_DIR OUT_DIR KILL_AT_SAVE_OF_STEP THREADS
"""

from __future__ import annotations

import os
import signal
import sys

STEPS, SAVE_EVERY = 6, 2


def fresh(tokenizer):
    """Model and batches exactly as a new process builds them (seeded)."""
    import torch

    from florence_vl.train.florence2 import Florence2Recipe, WorldBatches, build_model

    torch.manual_seed(0)
    recipe = Florence2Recipe(out_dir="unused", geometry="tiny", images_per_step=1, tasks_per_image=2,
                             max_target_tokens=32)
    model = build_model(recipe, tokenizer)
    return model, WorldBatches(recipe, tokenizer, 64, model.config.vision_config)


def config():
    from florence_vl.train.loop import LoopConfig

    return LoopConfig(steps=STEPS, lr=1e-3, warmup_steps=2, precision="no", log_every=1, save_every=SAVE_EVERY)


def load_tokenizer(directory):
    from transformers import AutoTokenizer

    from florence_vl.florence2.special_tokens import ensure_florence2_tokens

    tokenizer = AutoTokenizer.from_pretrained(directory)
    ensure_florence2_tokens(tokenizer)
    return tokenizer


def main(tokenizer_dir: str, out_dir: str, kill_step: str, threads: str) -> None:
    import torch

    import florence_vl.train.loop as loop
    from florence_vl.train.florence2 import florence2_loss

    torch.set_num_threads(int(threads))
    save_state = loop.Accelerator.save_state

    def dying_save(self, output_dir, **kwargs):
        result = save_state(self, output_dir, **kwargs)
        if f"step-{kill_step}-" in str(output_dir):  # half-written: the weights file cut short, then kill -9
            weights = os.path.join(output_dir, "model.safetensors")
            with open(weights, "r+b") as f:
                f.truncate(os.path.getsize(weights) // 3)
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    loop.Accelerator.save_state = dying_save
    model, batches = fresh(load_tokenizer(tokenizer_dir))
    loop.train(model, batches, florence2_loss, config(), out_dir, progress=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
