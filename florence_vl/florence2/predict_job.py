"""Batch jobs: one Florence-2 task over a folder of images, batched, resumable, bad images skipped.

Every finished image is appended to a JSON-lines journal (florence_vl/journal.py, shared with the
Florence-VL question job), one line per image (`TaskResult.to_dict()`), fsynced after each batch. With `--format jsonl` the journal is the output itself; with json or coco it
is `OUT.results.jsonl` beside the output, which is rebuilt from it at the end. A re-run reads the
journal and skips the images already in it, so an interrupted job goes on where it stopped (a line
torn by the interruption is dropped). An image that cannot be used is logged, counted and skipped;
the job goes on. Images are checked before the model loads, so those mistakes show at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import InputError
from ..images import load_image
from ..journal import JournalWriter, progress_bar, stderr_log  # noqa: F401 - stderr_log: the CLI's logger
from ..journal import read_journal as journal_lines
from .export import results_from_json, results_to_json, write_coco_results, write_json
from .postprocess import DEFAULT_BOX_SCORE

FORMATS = ("json", "jsonl", "coco")


def _key(path: str | os.PathLike) -> str:
    return os.path.realpath(path)


def journal_path(out: str | os.PathLike, fmt: str) -> Path:
    out = Path(out)
    return out if fmt == "jsonl" else out.with_name(out.name + ".results.jsonl")


def read_journal(path: str | os.PathLike, task: str) -> list[dict]:
    """The task results already written (journal.read_journal); a journal of another task is refused."""
    records = journal_lines(path, "image")
    other = {r.get("task") for r in records} - {task}
    if other:
        raise InputError(f"{path} holds results of {', '.join(sorted(map(str, other)))}, not {task}; "
                         "use another --out")
    return records


@dataclass
class JobPlan:
    todo: list[Path]                                   # readable images still to run
    done: list[dict]                                   # journal records of images finished before
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (image, why)


def plan_job(paths: Sequence[Path], task: str, journal: Path, log: Callable[[str], None]) -> JobPlan:
    """Which images still need running; unreadable ones are logged and skipped (before any model loads)."""
    done = read_journal(journal, task)
    finished = {_key(r["image"]) for r in done}
    plan = JobPlan(todo=[], done=done)
    for path in paths:
        if _key(path) in finished:
            continue
        try:
            load_image(path)
        except InputError as error:
            plan.skipped.append((path, str(error)))
            log(f"skipped {path}: {error}")
            continue
        plan.todo.append(path)
    return plan


def run_job(florence, plan: JobPlan, journal: Path, *, task: str, text: str | None, region, batch_size: int,
            num_beams: int, max_new_tokens: int, log: Callable[[str], None], progress: bool = True,
            stop_loops: bool = True, box_score: str = DEFAULT_BOX_SCORE) -> list[dict]:
    """Run the plan's images `batch_size` at a time, appending each batch to the journal; new records."""
    from .runner import TaskRequest

    written: list[dict] = []
    bar = progress_bar(len(plan.todo), f"florence-2 {task}", "img", progress)
    with JournalWriter(journal) as out:
        for start in range(0, len(plan.todo), batch_size):
            chunk = plan.todo[start:start + batch_size]
            requests = [TaskRequest(p, task, text, region) for p in chunk]
            run = lambda reqs: florence.run_requests(  # noqa: E731
                reqs, batch_size=batch_size, num_beams=num_beams, max_new_tokens=max_new_tokens,
                stop_loops=stop_loops, box_score=box_score)
            try:
                results = run(requests)
            except InputError:  # one image the model refuses: run the chunk one by one, skip that one
                results = []
                for path, request in zip(chunk, requests):
                    try:
                        results.extend(run([request]))
                    except InputError as error:
                        plan.skipped.append((path, str(error)))
                        log(f"skipped {path}: {error}")
            records = results_to_json(results)
            out.append(records)
            written += records
            bar.update(len(chunk))
            bar.set_postfix(skipped=len(plan.skipped), refresh=False)
    bar.close()
    return written


def finish_job(fmt: str, out: Path, journal: Path, paths: Sequence[Path], task: str, *, image_ids=None,
               categories=None) -> int:
    """Write the json / coco output from the journal, in the folder's order; the number of results in it."""
    if fmt == "jsonl":
        return len(read_journal(journal, task))
    by_key = {_key(r["image"]): r for r in read_journal(journal, task)}
    records = [by_key[_key(p)] for p in paths if _key(p) in by_key]
    results = results_from_json(records)
    if fmt == "coco":
        write_coco_results(results, out, image_ids=image_ids, categories=categories)
    else:
        write_json(results, out)
    return len(results)
