"""Issue 7, prompts and model output: empty, too long, unknown tasks, control tokens in user text (no
injection), and generated text of any shape parsed without exceptions into coordinates inside the image."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

import florence_vl.cli as cli
from florence_vl.errors import InputError
from florence_vl.florence2.postprocess import decode_with_spans, parse_output
from florence_vl.florence2.special_tokens import FLORENCE2_ADDED_TOKENS, IMAGE_TOKEN
from florence_vl.florence2.tasks import TASKS, build_prompt, get_task

TEXT_TASKS = [t.token for t in TASKS.values() if t.input == "text"]
CONTROL = ["<loc_0>", "<loc_999>", "<loc_1000>", "<loc_12345678901234567890>", "<sep>", "<poly>", "</poly>",
           "<s>", "</s>", "<pad>", "<unk>", "<mask>", IMAGE_TOKEN, "<OD>", "<CAPTION>", "<od>", "</ocr>", "<and>",
           "<REGION_TO_OCR>", "<region_to_desciption>"]
NEAR_MISSES = ["<LOC_5>", "<loc_05>", "< loc_5>", "<loc_5 >", "<loc5>", "＜loc_5＞", "<lo\u200bc_5>", "<loc_-1>",
               "<<loc_1>loc_2>", "<loc_<image>3>", "<", ">", "_", "loc", "\n", "\t", "  "]
WORDS = ["a red car", "circle", "HELLO", "é", "日本", "🙂", "x" * 40]


@pytest.fixture(scope="module")
def control_ids(tiny_tokenizer):
    """Every id a user must not be able to put into the encoder: added Florence-2 tokens, <image>, BART's."""
    ids = set(tiny_tokenizer.convert_tokens_to_ids(FLORENCE2_ADDED_TOKENS + [IMAGE_TOKEN, "<unk>", "<mask>", "<pad>"]))
    ids |= {tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id}
    return ids


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(CONTROL + NEAR_MISSES + WORDS), max_size=12).map("".join),
       st.sampled_from(TEXT_TASKS))
def test_user_text_never_becomes_control_tokens(tiny_tokenizer, control_ids, text, task):
    try:
        prompt = build_prompt(task, text)
    except InputError as error:  # nothing left once control tokens are removed
        assert "needs --text" in str(error)
        return
    ids = tiny_tokenizer(prompt)["input_ids"]
    inner = ids[1:-1]  # the tokenizer's own <s> ... </s> wrap the prompt
    assert not control_ids & set(inner), (text, prompt, tiny_tokenizer.convert_ids_to_tokens(inner))


@pytest.mark.parametrize("text", [None, "", "   ", "\n\t", "<loc_1><loc_2>", "<s></s><pad>", "<image>" * 50,
                                  "<OD>", " <sep> <poly> "])
@pytest.mark.parametrize("task", TEXT_TASKS)
def test_empty_text_is_a_clear_error(task, text):
    with pytest.raises(InputError, match="needs --text"):
        build_prompt(task, text)


@pytest.mark.parametrize("name", ["", " ", "<>", "<<>>", "DETECT", "<od >x", "OD\n", "O D", "<loc_5>", "CAPTION?",
                                  "<OD><OD>", "x" * 10_000])
def test_unknown_task_names(name):
    if name.strip().strip("<>").upper() in {t.name for t in TASKS.values()}:
        assert get_task(name)
        return
    with pytest.raises(InputError, match="unknown task"):
        get_task(name)


@pytest.mark.parametrize("region", [None, "1,2,3", "1,2,3,4,5", "a,b,c,d", [1, 2, 3], [1, 2, "x", 4],
                                    [0, 0, float("inf"), 5], "0,0,nan,5", (5, 5, 1, 1), "", "1;2;3;4", object()])
def test_bad_regions_are_input_errors(region):
    with pytest.raises(InputError):
        build_prompt("<REGION_TO_CATEGORY>", region=region, image_size=(100, 80))


def test_regions_outside_the_image_are_clamped_not_refused():
    prompt = build_prompt("<REGION_TO_OCR>", region=[-50, -1e9, 1e9, 1e12], image_size=(100, 80))
    assert prompt == "What text is in the region <loc_0><loc_0><loc_999><loc_999>?"


def test_the_longest_prompt_runs_and_one_token_more_is_a_clear_error(tiny_florence2):
    """The encoder reads max_position_embeddings tokens, image placeholders included: the runner refuses a
    longer prompt with InputError rather than truncating it silently (a cut phrase changes the answer)."""
    image = Image.new("RGB", (32, 24), (9, 9, 9))
    task = "<OPEN_VOCABULARY_DETECTION>"
    budget = tiny_florence2.max_source_tokens - tiny_florence2.num_image_tokens
    base = len(tiny_florence2.tokenizer(build_prompt(task, "a"))["input_ids"])
    per_word = len(tiny_florence2.tokenizer(build_prompt(task, "a a"))["input_ids"]) - base
    assert per_word == 1
    fits = "a" + " a" * (budget - base)
    [result] = tiny_florence2.run([image], task, text=fits, num_beams=1, max_new_tokens=4)
    assert len(tiny_florence2.tokenizer(result.prompt)["input_ids"]) == budget
    with pytest.raises(InputError, match=f"prompt too long: {budget + 1} tokens; this model reads at most {budget}"):
        tiny_florence2.run([image], task, text=fits + " a", num_beams=1, max_new_tokens=4)


def test_cli_long_text_and_unknown_task_are_one_line(tiny_florence2, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_load_florence2", lambda args: tiny_florence2)
    path = tmp_path / "i.png"
    Image.new("RGB", (40, 30)).save(path)
    for argv, message in [
        (["--task", "OPEN_VOCABULARY_DETECTION", "--text", "circle " * 5000], "prompt too long"),
        (["--task", "OPEN_VOCABULARY_DETECTION", "--text", "<loc_1> <image> </s>"], "needs --text"),
        (["--task", "<NOT_A_TASK>"], "unknown task"),
        (["--task", ""], "unknown task"),
    ]:
        assert cli.main(["tasks", str(path), *argv, "--beams", "1", "--max-new-tokens", "4"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


# ------------------------------------------------------------------------------------------ generated text


S = (640, 37)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(0, 10_000), max_size=80), data=st.data())
def test_any_generated_tokens_parse_into_the_image_frame(tiny_tokenizer, ids, data):
    """Random token ids (words, <loc_k>, <sep>, <poly>, </s>, anything) with random log-probs: no task's
    parser raises, every coordinate lies inside the image and every score is a probability."""
    ids = [i % len(tiny_tokenizer) for i in ids]
    logprobs = data.draw(st.lists(st.one_of(st.floats(-50, 0), st.just(-math.inf)), min_size=len(ids),
                                  max_size=len(ids)))
    decoded = decode_with_spans(tiny_tokenizer, ids, logprobs)
    for task in TASKS:
        out = parse_output(task, decoded, S)
        if isinstance(out, str):
            continue
        for key in ("bboxes", "quad_boxes"):
            for shape in out.get(key, []):
                _inside(shape)
        for instance in out.get("polygons", []):
            for polygon in instance:
                assert len(polygon) >= 6 and len(polygon) % 2 == 0
                _inside(polygon)
        for score in out.get("scores", []):
            assert score is None or 0.0 <= score <= 1.0


def _inside(flat):
    xs, ys = flat[0::2], flat[1::2]
    assert all(0 <= x <= S[0] for x in xs) and all(0 <= y <= S[1] for y in ys), flat


@pytest.mark.parametrize("text", [
    "<loc_1><loc_2><loc_3><loc_4>" * 300,                         # a very long run of boxes, no label
    "label" + "<loc_7>" * 4001,                                  # a huge odd run
    "<poly>" * 50 + "<loc_1>" * 7 + "</poly>" * 3,               # unbalanced polygon wrappers
    "a<loc_99999999999999999999999><loc_1><loc_2><loc_3>",       # a bin far past 999
    "</s><s><pad>" * 100,
    "x" * 20_000,                                                # long text without a loc (was quadratic)
])
def test_pathological_generated_text(text):
    for task in TASKS:
        out = parse_output(task, text, S)
        if isinstance(out, dict):
            for shape in out.get("bboxes", []) + out.get("quad_boxes", []):
                _inside(shape)


def test_parsing_long_text_takes_linear_time():
    """Regression: the phrase+run patterns retried from every character; 20,000 characters without a
    <loc_k> took ~100 s over the 15 tasks on this machine (quadratic). Now a pass is linear."""
    import time

    for text in ("x" * 20_000, "x<" * 10_000, "<poly>" * 3_000 + "<loc_1>" * 7, "a b<loc_1>" * 2_000):
        started = time.perf_counter()
        for task in TASKS:
            parse_output(task, text, S)
        assert time.perf_counter() - started < 3.0, text[:12]


_OLD_RUN = r"([^<]*)((?:<loc_\d+>)+)"
_OLD_POLY_RUN = r"([^<]*)((?:<loc_\d+>|<sep>|<poly>|</poly>)+)"


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(list("ab <>/_sep0123456789loc") + ["<loc_5>", "<loc_999>", "<sep>", "<poly>",
                                                                     "</poly>", "</s>"]), max_size=40).map("".join))
def test_linear_run_finder_reads_phrases_as_the_published_pattern(text):
    """The one-pass phrase/run split gives exactly what the published `([^<]*)(run)` regex gives."""
    import re

    from florence_vl.florence2.postprocess import _LOC_RUN_RE, _POLY_RUN_RE, _runs_with_phrases

    for old, new in ((_OLD_RUN, _LOC_RUN_RE), (_OLD_POLY_RUN, _POLY_RUN_RE)):
        expected = [(m.group(1), m.group(2), m.start(2)) for m in re.finditer(old, text)]
        assert [(p, m.group(0), m.start()) for p, m in _runs_with_phrases(text, new)] == expected
