"""Chat templates (as the release writes them) and the labels they give."""

import pytest

from florence_vl.errors import InputError
from florence_vl.vl.model import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from florence_vl.vl.processor import VLProcessor
from florence_vl.vl.templates import TEMPLATES, get_template, render
from vl_tiny import llm_tokenizer


def text(segments):
    return "".join(t for t, _ in segments)


def test_phi3_and_llama3_prompts():
    turns = [("What color is the star?<image>", "green"), ("How many?", None)]
    assert text(render(TEMPLATES["phi3"], turns)) == (
        "<|system|>\nYou are a helpful AI assistant.<|end|>\n<|user|>\n<image>\nWhat color is the star?<|end|>"
        "\n<|assistant|>\ngreen<|end|>\n<|user|>\nHow many?<|end|>\n<|assistant|>\n")
    llama = text(render(TEMPLATES["llama3"], [("<image>\nHi", None)]))
    assert llama.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    assert llama.endswith("<|start_header_id|>user<|end_header_id|>\n\n<image>\nHi<|eot_id|>"
                          "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert render(TEMPLATES["plain"], [("<image>\nDescribe.", "A red circle.")]) == [
        ("<image>", False), ("A red circle.\n", True)]
    with pytest.raises(InputError):
        get_template("vicuna")


def test_labels_cover_only_the_answers():
    tok = llm_tokenizer()
    proc = VLProcessor(tok, image_processor=None, template="phi3")
    ids, labels = proc.encode([("<image>\nHow many shapes are there?", "3"), ("What color is the star?", "green")])
    assert ids[0] == tok.bos_token_id and ids.count(IMAGE_TOKEN_INDEX) == 1
    targets = [i for i, l in zip(ids, labels) if l != IGNORE_INDEX]
    assert tok.decode(targets) == "3<|end|>green<|end|>"
    plain = VLProcessor(tok, image_processor=None, template="plain")
    ids, labels = plain.encode([("<image>\nDescribe the image in detail.", "a red circle")])
    assert ids[:2] == [tok.bos_token_id, IMAGE_TOKEN_INDEX]
    assert tok.decode([i for i, l in zip(ids, labels) if l != IGNORE_INDEX]) == "a red circle\n"
    end = tok.convert_tokens_to_ids("<|end|>")
    assert end in proc.stop_token_ids() and tok.eos_token_id in proc.stop_token_ids()


def test_tokenizer_template():
    tok = llm_tokenizer()
    tok.chat_template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
    proc = VLProcessor(tok, image_processor=None, template="tokenizer")
    ids = proc.prompt("How many?")
    assert IMAGE_TOKEN_INDEX in ids
    assert tok.decode([i for i in ids if i >= 0]).endswith("How many?[assistant]")
    tok.chat_template = None
    with pytest.raises(InputError, match="no chat template"):
        VLProcessor(tok, image_processor=None, template="tokenizer").prompt("x")
