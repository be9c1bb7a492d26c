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
