"""Tiny Florence-VL builders shared by the Florence-VL tests (random weights, toy sizes)."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

from conftest import spread_weights

LLM_CORPUS = ["a red circle above the blue square", "How many shapes are there? 3 yes no 0 1 2 4 5",
              "What color is the star? green purple orange", "Describe the image in detail.",
              "Answer the question using a single word or phrase.", "The image shows a small yellow star."]


def llm_tokenizer():
    from florence_vl.vl.nano_llm import train_llm_tokenizer

    return train_llm_tokenizer(LLM_CORPUS, 340)


def tiny_llm(kind: str, tokenizer, seed: int = 0, spread: bool = True):
    torch.manual_seed(seed)
    common = dict(vocab_size=-(-len(tokenizer) // 64) * 64, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(LlamaConfig(**common)) if kind == "llama" else Phi3ForCausalLM(Phi3Config(**common))
    return spread_weights(model, seed=seed, std=0.3) if spread else model


def tiny_vl(tiny_florence2, kind="llama", seed=0, **config):
    from florence_vl.vl.chat import FlorenceVL
    from florence_vl.vl.model import FlorenceVLForCausalLM, VLConfig

    tokenizer = llm_tokenizer()
    model = FlorenceVLForCausalLM(tiny_florence2.model, tiny_florence2.tokenizer, tiny_florence2.num_image_tokens,
                                  tiny_llm(kind, tokenizer, seed), VLConfig(**config))
    return FlorenceVL(model, tokenizer, tiny_florence2.image_processor, source="tiny")


def recipe_model(world, florence2_dir, template="plain"):
    """The training recipe's own tiny Florence-VL (tokenizer trained on the `world` fixture's text, tiny nano LLM,
    the tiny Florence-2 checkpoint): model, tokenizer, Florence-2 bundle."""
    from florence_vl.florence2.checkpoint import load_florence2
    from florence_vl.train.vl import VLRecipe, build_tokenizer, build_vl, world_texts
    from florence_vl.vl.nano_llm import build_llm

    recipe = VLRecipe(out_dir="unused", florence2=str(florence2_dir), llm_size="tiny", tokenizer_vocab=400)
    tokenizer = build_tokenizer(recipe, world_texts(world))
    vision = load_florence2(florence2_dir)
    torch.manual_seed(0)
    return build_vl(recipe, build_llm(tokenizer, "tiny"), vision, template), tokenizer, vision


QUICK_STAGE = {"batch_size": 2, "max_length": 160,
               "loop": {"steps": 2, "warmup_steps": 1, "log_every": 1, "save_every": 100, "lr": 1e-2}}


def quick_recipe(out_dir, world, florence2_dir, **stages) -> dict:
    """A tiny recipe's fields: LM, stage 1 and stage 2 for two steps each on the `world` fixture, plus `stages`
    (stage name -> fields over QUICK_STAGE)."""
    data = {"out_dir": str(out_dir), "florence2": str(florence2_dir), "llm_size": "tiny", "tokenizer_vocab": 400,
            "lm": QUICK_STAGE, "stage1": dict(QUICK_STAGE, data=str(world / "llava_pretrain.json")),
            "stage2": dict(QUICK_STAGE, data=str(world / "llava_instruct.json"))}
    data.update({name: dict(QUICK_STAGE, **fields) for name, fields in stages.items()})
    return data


def record_loads(monkeypatch) -> list:
    """The folders `load_florence_vl` is called with from now on, in order."""
    import florence_vl.vl.checkpoint as checkpoint

    loaded = []
    real_load = checkpoint.load_florence_vl
    monkeypatch.setattr(checkpoint, "load_florence_vl",
                        lambda path, *a, **k: loaded.append(path) or real_load(path, *a, **k))
    return loaded
