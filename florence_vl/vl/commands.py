"""The Florence-VL commands of `florence-vl`: chat (one question, or interactive), eval vl, predict --input."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import InputError


def add_chat_parser(sub) -> None:
    chat = sub.add_parser("chat", help="ask Florence-VL about an image (one question, or interactive)",
                          description="Ask Florence-VL about an image. With a question: print the answer. "
                          "Without: an interactive chat about the image (empty line or Ctrl-D ends it).",
                          epilog='example: florence-vl chat scene.png "How many shapes are there?" --stream')
    chat.add_argument("image", help="image file")
    chat.add_argument("question", nargs="?", help="the question; leave out for an interactive chat")
    chat.add_argument("--model", default="nano", help="Florence-VL checkpoint directory (own format or the "
                      "published jiuhai/florence-vl layout) or hub id (default: the shipped nano)")
    chat.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    chat.add_argument("--template", choices=["plain", "phi3", "llama3", "tokenizer"],
                      help="chat template (default: the checkpoint's)")
    chat.add_argument("--max-new-tokens", type=int, default=256, help="generation limit (default: 256)")
    chat.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                      help="compute dtype; auto keeps a float32 checkpoint's and computes a half-precision one "
                      "in this CPU's fast dtype: bfloat16 with AMX-BF16, else float32 when that fits in free "
                      "memory (default: auto)")
    chat.add_argument("--allow-pickle", action="store_true", help="allow pickle weights you trust")


EMPTY_ANSWER_NOTE = ("(the model ended its answer at once, so it is empty; the nano Florence-VL was trained on "
                     "questions that end with \"Answer the question using a single word or phrase.\" and answers "
                     "best with it)")


def _say(vl, image, question, history, args, out) -> str:
    if args.stream:
        pieces = []
        for piece in vl.chat(image, question, history=history, stream=True, max_new_tokens=args.max_new_tokens):
            out.write(piece)
            out.flush()
            pieces.append(piece)
        out.write("\n")
        answer = "".join(pieces).strip()
    else:
        answer = vl.chat(image, question, history=history, max_new_tokens=args.max_new_tokens)
        out.write(answer + "\n")
    if not answer.strip():   # an empty line alone looks like a hang or a crash
        print(EMPTY_ANSWER_NOTE, file=sys.stderr)
    return answer


def cmd_chat(args) -> int:
    from ..images import load_image
    from .chat import FlorenceVL

    if args.max_new_tokens < 1:
        raise InputError("--max-new-tokens must be at least 1")
    if args.question is not None and not args.question.strip():
        raise InputError("the question is empty")
    image = load_image(args.image)                   # checked before the model loads
    vl = FlorenceVL.from_pretrained(args.model, dtype=args.dtype, template=args.template,
                                    allow_pickle=args.allow_pickle)
    if args.question is not None:
        _say(vl, image, args.question, (), args, sys.stdout)
        return 0
    history: list[tuple[str, str]] = []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            sys.stdout.write("you> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line or not line.strip() or line.strip() in ("exit", "quit"):
            return 0
        if interactive:
            sys.stdout.write("florence-vl> ")
        answer = _say(vl, image, line.strip(), history, args, sys.stdout)
        history.append((line.strip(), answer))


def cmd_eval_vl(args) -> int:
    from ..eval.florence2_eval import write_report
    from ..eval.vl_eval import evaluate_vl, report_table
    from .chat import FlorenceVL

    if not args.data:
        raise InputError("eval vl needs --data DIR (make one with `florence-vl world generate`)")
    if not (Path(args.data) / "records.jsonl").exists():
        raise InputError(f"{args.data} is not a generated split (no records.jsonl); "
                         "make one with `florence-vl world generate`")
    vl = FlorenceVL.from_pretrained(args.model, dtype=args.dtype)
    result = evaluate_vl(vl, args.data, limit=args.limit, batch_size=max(args.batch_size, 1),
                         max_new_tokens=min(args.max_new_tokens, 64))
    result["model"] = str(args.model)
    print(report_table(result))
    if args.out:
        write_report(result, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_predict_questions(args, load_vl) -> int:
    """`florence-vl predict --input questions.jsonl --image-root DIR --out answers.jsonl`: Florence-VL answers."""
    from ..journal import stderr_log
    from .predict_job import plan_questions, run_questions

    for flag, value in (("--task", args.task), ("--images", args.images), ("--text", args.text),
                        ("--region", args.region), ("--coco-gt", args.coco_gt)):
        if value is not None:
            raise InputError(f"{flag} goes with Florence-2 tasks (--task, --images), not with --input questions")
    if args.format not in (None, "jsonl"):
        raise InputError("answers to --input questions are written as jsonl; leave out --format")
    beams = 1 if args.beams is None else args.beams
    max_new_tokens = 64 if args.max_new_tokens is None else args.max_new_tokens
    if args.batch_size < 1 or beams < 1 or max_new_tokens < 1:
        raise InputError("--batch-size, --beams and --max-new-tokens must be at least 1")
    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"--out {args.out} is a directory; give a file name")
    image_root = args.image_root if args.image_root is not None else str(Path(args.input).parent)
    plan = plan_questions(args.input, image_root, out, log=stderr_log)  # every input mistake before the model loads
    if plan.total == 0:
        raise InputError(f"{args.input} holds no usable question ({plan.bad_lines} bad line(s)); each line must be "
                         '{"id", "image", "question"}')
    if not plan.todo and not plan.done:
        raise InputError(f"none of the {plan.total} questions has a usable image (first: {plan.skipped[0][1]})")
    answered = 0
    if plan.todo:
        if plan.done:
            print(f"resuming: {plan.done} of {plan.total} questions already answered in {args.out}", file=sys.stderr)
        answered = run_questions(load_vl(args, args.model), plan, out, batch_size=args.batch_size,
                                 max_new_tokens=max_new_tokens, num_beams=beams, log=stderr_log)
    notes = f"; {plan.summary()} (named above)" if plan.summary() else ""
    print(f"wrote {args.out}: {answered + plan.done} answers ({plan.done} from before){notes}", file=sys.stderr)
    return 0
