"""Batched inference: masks hide the padding, so a batch gives exactly the one-at-a-time results."""

import pytest
import torch
from PIL import Image

from florence_vl.errors import InputError
from florence_vl.florence2.runner import TaskRequest


def _image(i: int) -> Image.Image:
    image = Image.new("RGB", (60 + 17 * i, 50 + 9 * i), (40 * i % 256, 120, 200 - 20 * i))
    image.paste((255, 255 - 30 * i, 0), (5 + i, 5, 25 + 2 * i, 30))
    return image


# Prompts of very different lengths, so the batch is padded a lot.
REQUESTS = [
    TaskRequest(_image(0), "<OD>"),
    TaskRequest(_image(1), "<CAPTION_TO_PHRASE_GROUNDING>",
                text="a red circle left of the blue square and a green triangle above a purple hexagon"),
    TaskRequest(_image(2), "<REGION_TO_CATEGORY>", region=[3, 4, 30, 40]),
    TaskRequest(_image(3), "<OCR_WITH_REGION>"),
    TaskRequest(_image(4), "<CAPTION>"),
]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_equals_one_at_a_time(tiny_florence2, num_beams):
    options = dict(num_beams=num_beams, max_new_tokens=24)
    batched = tiny_florence2.run_requests(REQUESTS, batch_size=len(REQUESTS), **options)
    single = [tiny_florence2.run_requests([r], batch_size=1, **options)[0] for r in REQUESTS]
    assert [r.text for r in batched] == [r.text for r in single]
    for b, s in zip(batched, single):
        if isinstance(b.output, dict):
            b_scores, s_scores = b.output.pop("scores", []), s.output.pop("scores", [])
            assert b_scores == pytest.approx(s_scores, rel=1e-4)  # float noise of batched matmuls only
        assert b.output == s.output
    # the outputs really depend on the input (otherwise equality would prove nothing)
    assert len({r.text for r in batched}) >= 3
    # results come back in request order, each in its own image's frame
    assert [r.task for r in batched] == [r.task for r in REQUESTS]
    assert [r.image_size for r in batched] == [r.image.size for r in REQUESTS]


def test_padding_is_never_attended(tiny_florence2):
    prepared = [tiny_florence2._prepare(i, r) for i, r in enumerate(REQUESTS[:2])]
    inputs = tiny_florence2.encode(prepared)
    mask = inputs["attention_mask"]
    assert (mask == 0).any(), "the short prompt must be padded"
    decoder_ids = torch.tensor([[2, 0, 5, 9]] * 2)
    with torch.no_grad():
        reference = tiny_florence2.model(**inputs, decoder_input_ids=decoder_ids).logits
        scrambled = dict(inputs, input_ids=inputs["input_ids"].masked_fill(mask == 0, 17))
        changed = tiny_florence2.model(**scrambled, decoder_input_ids=decoder_ids).logits
    # whatever sits in the padded positions, the logits do not move
    torch.testing.assert_close(changed, reference, rtol=0, atol=1e-5)


def test_prompt_layout_is_image_tokens_then_prompt(tiny_florence2):
    prepared = [tiny_florence2._prepare(0, REQUESTS[2])]
    ids = tiny_florence2.encode(prepared)["input_ids"][0].tolist()
    n = tiny_florence2.num_image_tokens
    assert n == 5 and ids[:n] == [tiny_florence2.image_token_id] * n
    assert tiny_florence2.tokenizer.decode(ids[n:]) == "<s>What is the region <loc_31><loc_58><loc_319><loc_588>?</s>"


def test_box_scores_are_probabilities(tiny_florence2):
    results = tiny_florence2.run([_image(i) for i in range(5)], "<REGION_PROPOSAL>", num_beams=1, max_new_tokens=40)
    boxes = [r for r in results if r.output["bboxes"]]
    assert boxes, "the spread random model writes some loc groups"
    for r in boxes:
        assert len(r.output["scores"]) == len(r.output["bboxes"])
        assert all(0.0 < s <= 1.0 for s in r.output["scores"])
    unscored = tiny_florence2.run([_image(0)], "<REGION_PROPOSAL>", num_beams=1, max_new_tokens=40,
                                  with_scores=False)
    assert "scores" not in unscored[0].output and unscored[0].text == results[0].text


def test_box_score_modes_share_one_generation(tiny_florence2):
    images = [_image(i) for i in range(5)]
    run = lambda mode: tiny_florence2.run(images, "<OD>", num_beams=1, max_new_tokens=40, box_score=mode)  # noqa: E731
    both, loc, label = run("label_x_loc"), run("loc"), run("label")
    labelled = [i for i, r in enumerate(both) if r.output["labels"]]
    assert labelled, "the spread random model writes some labelled boxes"
    for i in labelled:
        assert both[i].text == loc[i].text == label[i].text
        assert both[i].output["scores"] == pytest.approx(
            [a * b for a, b in zip(loc[i].output["scores"], label[i].output["scores"])], rel=1e-4)
        assert all(s < l for s, l in zip(both[i].output["scores"], loc[i].output["scores"]))
    with pytest.raises(InputError, match="box score"):
        run("max")


def test_bfloat16_runs(tiny_florence2):
    from florence_vl.florence2.runner import Florence2

    bf16 = Florence2(tiny_florence2.model.to(torch.bfloat16), tiny_florence2.tokenizer,
                     tiny_florence2.image_processor)
    try:
        [result] = bf16.run([_image(1)], "<OD>", num_beams=1, max_new_tokens=8)
        assert bf16.dtype == torch.bfloat16 and isinstance(result.output, dict)
    finally:
        tiny_florence2.model.to(torch.float32)


def test_user_mistakes(tiny_florence2, tmp_path):
    with pytest.raises(InputError, match="unknown task"):
        tiny_florence2.run([_image(0)], "<DETECT>")
    with pytest.raises(InputError, match="image not found"):
        tiny_florence2.run([tmp_path / "missing.png"], "<OD>")
    with pytest.raises(InputError, match="prompt too long"):
        tiny_florence2.run([_image(0)], "<OPEN_VOCABULARY_DETECTION>", text="circle " * 400)
    with pytest.raises(InputError, match="batch size"):
        tiny_florence2.run([_image(0)], "<OD>", batch_size=0)


def test_checkpoint_generation_settings_do_not_leak(tiny_florence2):
    """The published configs carry no_repeat_ngram_size=3; our decoding must only change when asked."""
    from transformers import GenerationConfig

    from florence_vl.florence2.runner import Florence2

    model = tiny_florence2.model
    model.generation_config = GenerationConfig(no_repeat_ngram_size=3, num_beams=3, decoder_start_token_id=2,
                                               eos_token_id=2, pad_token_id=1, bos_token_id=0)
    runner = Florence2(model, tiny_florence2.tokenizer, tiny_florence2.image_processor)
    options = dict(num_beams=1, max_new_tokens=40)
    default = runner.run([_image(2)], "<OD>", **options)[0].text
    explicit_off = runner.run([_image(2)], "<OD>", no_repeat_ngram_size=0, **options)[0].text
    published = runner.run([_image(2)], "<OD>", no_repeat_ngram_size=3, **options)[0].text
    assert default == explicit_off != published
    assert runner.checkpoint_generation_config.no_repeat_ngram_size == 3


def test_generation_stops_at_the_decoder_position_limit(tiny_florence2):
    """A model that never writes </s> must stop at the last learned position, not crash past it."""
    limit = tiny_florence2.model.config.text_config.max_position_embeddings
    [result] = tiny_florence2.run([_image(0)], "<CAPTION>", num_beams=1, max_new_tokens=10 * limit,
                                  with_scores=False)
    assert isinstance(result.output, str)
    assert len(tiny_florence2.tokenizer(result.text, add_special_tokens=False)["input_ids"]) <= limit
