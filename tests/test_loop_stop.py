"""The runaway-loop stop: a loop is cut to one copy, anything short of a loop is left alone, generation ends early."""

import torch

from florence_vl.florence2.loop_stop import RunawayLoopStop, drop_loop, loop_at_end, min_copies
from tests.test_runner import _image


def test_the_rule_needs_more_copies_of_shorter_units():
    assert [min_copies(unit) for unit in range(1, 9)] == [12, 6, 4, 3, 3, 3, 3, 3]
    ticks = [11, 12, 13, 14]
    assert loop_at_end(ticks + [7] * 12) == (1, 12)
    assert loop_at_end(ticks + [7] * 11) is None            # 11 copies of one token: not yet
    assert loop_at_end(ticks + [7, 8] * 6) == (2, 6)
    assert loop_at_end(ticks + [7, 8] * 5) is None
    box = [5, 101, 102, 103, 104]                           # a label and its four <loc_k>: a duplicate detection
    assert loop_at_end(ticks + box * 3) == (5, 3)
    assert loop_at_end(ticks + box * 2) is None
    assert loop_at_end(list(range(9)) * 3) is None         # a 9-token unit is longer than any loop we stop


def test_a_loop_keeps_one_copy_and_nothing_else_changes():
    chart = [20, 21, 22, 23, 24, 25]                        # "100 80 60 40 20" then " 0" for ever
    assert drop_loop(chart + [9] * 30) == (chart + [9], 29)
    caption = [1, 2, 3, 4, 8, 2, 3, 4, 9, 2, 3, 4, 10]       # "is on the" three times with other words between
    assert drop_loop(caption) == (caption, 0)
    assert drop_loop([]) == ([], 0)


def test_the_stopping_criterion_marks_only_looping_rows():
    start = [2]
    rows = torch.tensor([start + [5, 6] + [9] * 12, start + list(range(10, 24))])
    assert RunawayLoopStop(prompt_length=1)(rows, None).tolist() == [True, False]
    # The decoder start token is not part of the text: 11 generated copies after it are not a loop yet.
    assert RunawayLoopStop(prompt_length=1)(torch.tensor([[9] * 12]), None).tolist() == [False]


def test_runner_stops_a_loop_and_reports_what_it_dropped(tiny_florence2):
    """Greedy and beam search: a model made to write one word for ever (a large bias on it) is stopped after 12
    copies and keeps one; without the stop it runs to max_new_tokens; a row that does not loop is unchanged."""
    tokenizer = tiny_florence2.tokenizer
    token = tokenizer(" red", add_special_tokens=False)["input_ids"][0]
    word = tokenizer.decode([token])
    for beams in (1, 3):
        options = dict(num_beams=beams, max_new_tokens=40, sequence_bias={(token,): 100.0})
        stopped = tiny_florence2.run([_image(1)], "<CAPTION>", **options)[0]
        running = tiny_florence2.run([_image(1)], "<CAPTION>", stop_loops=False, **options)[0]
        assert stopped.text.strip() == word.strip() and stopped.extra == {"loop_tokens_dropped": 11}
        assert running.text.count(word.strip()) > 20 and running.extra == {}
    plain = dict(num_beams=1, max_new_tokens=40)
    assert (tiny_florence2.run([_image(2)], "<OD>", **plain)[0].text
            == tiny_florence2.run([_image(2)], "<OD>", stop_loops=False, **plain)[0].text)


def test_cli_turns_the_stop_off_only_when_asked():
    from florence_vl.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["eval", "florence2", "--data", "d"]).stop_loops is True
    assert parser.parse_args(["eval", "florence2", "--data", "d", "--no-loop-stop"]).stop_loops is False
    assert parser.parse_args(["tasks", "x.png", "--task", "OCR", "--no-loop-stop"]).stop_loops is False
