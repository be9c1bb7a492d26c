"""Batch job: questions about images answered by Florence-VL, batched, resumable, bad input counted.

    florence-vl predict --input questions.jsonl --image-root DIR --out answers.jsonl [--model DIR_OR_ID]

Each input line is {"id", "image", "question"} (the image relative to --image-root, or absolute); each
output line is {"id", "answer"}. The output is the journal (florence_vl/journal.py): finished batches are
appended and fsynced, a re-run skips the ids already answered, and a line torn by an interruption is
dropped. Before the model loads, every line is read: a line that is not JSON or lacks a field, and a
repeated id (the first one counts), are counted and named; an image that cannot be read is named, its
questions skipped and counted. None of these stops the job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import InputError
from ..images import load_image, shown
from ..journal import JournalWriter, progress_bar, read_journal

Log = Callable[[str], None]


@dataclass
class Question:
    id: str | int
    image: Path
    question: str
    line: int


@dataclass
class QuestionPlan:
    todo: list[Question] = field(default_factory=list)
    done: int = 0                                             # ids answered by an earlier run
    bad_lines: int = 0
    duplicates: int = 0
    skipped: list[tuple[Question, str]] = field(default_factory=list)  # unusable images (and why)
    total: int = 0                                            # good, distinct questions in the input

    def summary(self) -> str:
        parts = [f"skipped {len(self.skipped)} question(s) with an unusable image"] if self.skipped else []
        parts += [f"{self.bad_lines} bad line(s)"] if self.bad_lines else []
        parts += [f"{self.duplicates} repeated id(s)"] if self.duplicates else []
        return "; ".join(parts)


def _question(record, line: int, image_root: Path) -> Question:
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in ("id", "image", "question") if k not in record]
    if missing:
        raise ValueError(f"no {', '.join(missing)}")
    ident, image, question = record["id"], record["image"], record["question"]
    if isinstance(ident, bool) or not isinstance(ident, (str, int)) or ident == "":
        raise ValueError("id must be a non-empty string or an integer")
    if not isinstance(image, str) or not image:
        raise ValueError("image must be a path")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question must be a non-empty string")
    path = Path(image).expanduser()
    return Question(ident, path if path.is_absolute() else image_root / path, question.strip(), line)


def plan_questions(input_path: str | Path, image_root: str | Path, out: str | Path, log: Log) -> QuestionPlan:
    """Read the questions and the answers so far; which questions still need the model."""
    input_path, image_root = Path(input_path), Path(image_root)
    if not input_path.is_file():
        raise InputError(f"--input {shown(input_path)} is not a file")
    if not image_root.is_dir():
        raise InputError(f"--image-root {shown(image_root)} is not a directory")
    finished = {json.dumps(r["id"]) for r in read_journal(out, "id")}
    plan, seen, usable = QuestionPlan(), set(), {}
    with open(input_path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                question = _question(json.loads(raw), number, image_root)
            except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
                plan.bad_lines += 1
                log(f"{shown(input_path)} line {number}: skipped, {str(error).splitlines()[0][:120]}")
                continue
            key = json.dumps(question.id)
            if key in seen:
                plan.duplicates += 1
                log(f"{shown(input_path)} line {number}: skipped, id {question.id!r} was already given")
                continue
            seen.add(key)
            plan.total += 1
            if key in finished:
                plan.done += 1
                continue
            if question.image not in usable:  # each image is checked once, however many questions it has
                try:
                    load_image(question.image)
                    usable[question.image] = None
                except InputError as error:
                    usable[question.image] = str(error)
                    log(f"skipped image {shown(question.image)}: {error}")
            if usable[question.image] is None:
                plan.todo.append(question)
            else:
                plan.skipped.append((question, usable[question.image]))
    return plan


def run_questions(vl, plan: QuestionPlan, out: str | Path, *, batch_size: int, max_new_tokens: int,
                  num_beams: int = 1, log: Log, progress: bool = True) -> int:
    """Answer the plan's questions `batch_size` at a time (FlorenceVL.answer), appending each batch to `out`."""
    answered = 0
    bar = progress_bar(len(plan.todo), "florence-vl answers", "q", progress)
    with JournalWriter(out) as journal:
        for start in range(0, len(plan.todo), batch_size):
            chunk = plan.todo[start:start + batch_size]
            ask = lambda qs: vl.answer([q.image for q in qs], [q.question for q in qs],  # noqa: E731
                                       batch_size=len(qs), max_new_tokens=max_new_tokens, num_beams=num_beams)
            try:
                pairs = list(zip(chunk, ask(chunk)))
            except InputError:  # an image went bad since it was checked: one by one, skip that one
                pairs = []
                for question in chunk:
                    try:
                        pairs += list(zip([question], ask([question])))
                    except InputError as error:
                        plan.skipped.append((question, str(error)))
                        log(f"skipped id {question.id!r}: {error}")
            journal.append({"id": q.id, "answer": a} for q, a in pairs)
            answered += len(pairs)
            bar.update(len(chunk))
            bar.set_postfix(skipped=len(plan.skipped), refresh=False)
    bar.close()
    return answered
