"""`florence-vl`: a thin command line over the Python API. User mistakes end in one line and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import FlorenceVLError, InputError
from .florence2.postprocess import BOX_SCORES, DEFAULT_BOX_SCORE
from .serve.server import add_arguments as add_serve_arguments

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + error
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def _task_list() -> str:
    from .florence2.tasks import TASKS

    width = max(len(t.name) for t in TASKS.values())
    return "\n".join(f"  {t.name:<{width}}  {t.description}" for t in TASKS.values())


def _add_model_options(p: argparse.ArgumentParser,
                       beams_help: str = "beam width; 1 = greedy (default: %(default)s)") -> None:
    p.add_argument("--model", default="nano", help="checkpoint directory or hub id, native or original "
                   "Florence-2 layout (default: the shipped nano model)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="compute dtype; auto keeps a float32 checkpoint's and computes a half-precision one in "
                   "this CPU's fast dtype: bfloat16 with AMX-BF16, else float32 when that fits in free memory "
                   "(default: auto)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow a pytorch_model.bin (pickle) checkpoint; only for files you trust")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    p.add_argument("--beams", type=int, default=3, help=beams_help)
    p.add_argument("--max-new-tokens", type=int, default=1024, help="generation limit (default: %(default)s)")


def _add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-loop-stop", dest="stop_loops", action="store_false",
                   help="Florence-2 tasks: let an output that has fallen into a runaway loop (the same 1-8 tokens again and again) "
                   "run on to --max-new-tokens; by default it is stopped and keeps one copy of the loop")
    p.add_argument("--box-score", default=DEFAULT_BOX_SCORE, choices=BOX_SCORES,
                   help="each box's and polygon's score: label_x_loc = P(label) x P(its <loc_k> tokens), which ranks "
                   "detections best for mAP; loc = the <loc_k> tokens alone (the published 'avg_loc_scores'); "
                   "label = the label alone ('avg_cat_name_scores') (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="florence-vl", description="Florence-2 and Florence-VL: run, serve, convert, evaluate.",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    tasks = sub.add_parser("tasks", help="run a Florence-2 task on images and print the results",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Run one Florence-2 task on one or more images.\n\nTasks:\n" + _task_list()
                           + "\n\nCoordinates (--region and every output) are pixels of the original image.",
                           epilog="example: florence-vl tasks photo.jpg --task OD --draw boxes.png")
    tasks.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    tasks.add_argument("--task", required=True, help="task name, e.g. OD or <OD> (list: --help)")
    tasks.add_argument("--text", help="phrase for CAPTION_TO_PHRASE_GROUNDING, REFERRING_EXPRESSION_SEGMENTATION, "
                       "OPEN_VOCABULARY_DETECTION")
    tasks.add_argument("--region", help="x0,y0,x1,y1 in pixels for the REGION_TO_* tasks")
    tasks.add_argument("--json", action="store_true", help="print JSON instead of text")
    tasks.add_argument("--draw", metavar="OUT.png", help="save a picture of the result (one image: this "
                       "file; several: OUT-<image name>.png)")
    _add_model_options(tasks)
    _add_output_options(tasks)

    predict = sub.add_parser("predict", help="batch jobs: a Florence-2 task over a directory of images, or "
                             "Florence-VL answers to a file of questions",
                             description="Either run one Florence-2 task over every image in a directory (--task, "
                             "--images), or answer every question of a JSON-lines file with Florence-VL (--input, "
                             "--image-root; lines {\"id\", \"image\", \"question\"} -> {\"id\", \"answer\"}). In "
                             "batches, with a progress bar. Resumable: a re-run skips what is done. An image that "
                             "cannot be read is named, skipped and counted; the job goes on. Defaults: --beams 3 and "
                             "--max-new-tokens 1024 for tasks, 1 and 64 for questions.",
                             epilog="examples: florence-vl predict --task OD --images DIR --format coco --out p.json\n"
                             "          florence-vl predict --input questions.jsonl --image-root DIR "
                             "--out answers.jsonl", formatter_class=argparse.RawDescriptionHelpFormatter)
    predict.add_argument("--task", help="Florence-2 task name, e.g. OD (with --images)")
    predict.add_argument("--images", metavar="DIR", help="directory of images (with --task)")
    predict.add_argument("--input", metavar="QUESTIONS.jsonl", help="questions for Florence-VL, one JSON object "
                         "per line: {\"id\", \"image\", \"question\"}")
    predict.add_argument("--image-root", metavar="DIR", help="folder the questions' image paths are relative to "
                         "(default: the --input file's folder)")
    predict.add_argument("--text", help="phrase for tasks that take one")
    predict.add_argument("--region", help="x0,y0,x1,y1 for REGION_TO_* tasks (same region on every image)")
    predict.add_argument("--format", choices=["json", "jsonl", "coco"],
                         help="json: every result; jsonl: one result per line, written as it goes; coco: COCO "
                         "results list for detection/segmentation. Re-running skips finished images (json and "
                         "coco keep them in OUT.results.jsonl). Default: json; questions are always jsonl")
    predict.add_argument("--coco-gt", metavar="GT.json", help="COCO ground truth whose image and category ids "
                         "the coco output should use")
    predict.add_argument("--out", required=True, help="output file")
    _add_model_options(predict)
    _add_output_options(predict)
    predict.set_defaults(beams=None, max_new_tokens=None)
    for action in predict._actions:  # their defaults depend on the job (the description says which)
        if action.dest in ("beams", "max_new_tokens"):
            action.help = action.help.replace("%(default)s", "see above")

    serve = sub.add_parser("serve", help="serve Florence-2 tasks and Florence-VL chat over HTTP (JSON API, "
                           "OpenAI chat API, web page), batching requests from many clients",
                           description="Serve over HTTP: GET / (web page), GET /health, GET /v1/models, "
                           "POST /v1/florence2/tasks (Florence-2, --model) and POST /v1/chat/completions "
                           "(OpenAI-compatible, Florence-VL, --vl-model). Requests arriving within "
                           "--batch-window-ms run as one batch of up to --batch-size; a full queue answers 503 "
                           "with Retry-After.",
                           epilog="example: florence-vl serve --model DIR --vl-model VL_DIR --allow-dir ./images")
    _add_model_options(serve)
    add_serve_arguments(serve)

    convert = sub.add_parser("convert", help="convert a Florence-2 checkpoint to transformers' native layout",
                             description="Load a Florence-2 checkpoint in either published layout (original "
                             "microsoft/Florence-2-* or native florence-community/*) and write the native "
                             "layout (safetensors), loadable by transformers' Florence2ForConditionalGeneration.")
    convert.add_argument("source", help="checkpoint directory or hub id")
    convert.add_argument("out", help="output directory")
    convert.add_argument("--allow-pickle", action="store_true", help="allow a pytorch_model.bin (pickle) input")

    world = sub.add_parser("world", help="the nano world: generate image splits with every annotation format")
    world_sub = world.add_subparsers(dest="world_command", metavar="ACTION", parser_class=_Parser, required=True)
    generate = world_sub.add_parser("generate", help="write a split: images + COCO, OCR, captions, Florence-2 "
                                    "tasks, LLaVA, VQA and POPE files",
                                    description="Generate a deterministic split of the nano world (see WORLD.md).")
    generate.add_argument("--split", default="test", choices=["train", "val", "test", "test-novel"])
    generate.add_argument("--n", type=int, default=500, help="number of images (default: 500)")
    generate.add_argument("--out", required=True, help="output directory")
    generate.add_argument("--seed", type=int, default=0, help="first scene seed (default: 0)")
    generate.add_argument("--workers", type=int, default=None,
                          help="processes drawing scenes (default: one per CPU core); the files do not depend on it")

    train = sub.add_parser("train", help="train a model from a YAML recipe (resumes from its last checkpoint)")
    train.add_argument("stage", choices=["unicl", "florence2", "crops", "glyphs", "vl"],
                       help="unicl: UniCL-nano (Florence); florence2: Florence-2-nano (DaViT from UniCL-nano); "
                       "crops: a Florence-2 checkpoint's DaViT on labelled object crops (shape and colour); "
                       "glyphs: a Florence-2 checkpoint's DaViT on the characters of text lines (CTC); "
                       "vl: Florence-VL-nano (nano LLM, stage 1, stage 2)")
    train.add_argument("config", help="YAML recipe, e.g. configs/unicl-nano.yaml or configs/florence2-nano.yaml")
    train.add_argument("--out", help="output directory (overrides out_dir of the recipe)")
    train.add_argument("--steps", type=int, help="number of steps (overrides the recipe)")

    classify = sub.add_parser("classify", help="zero-shot classification of images with UniCL (Florence)",
                              description="Zero-shot classification with the UniCL (Florence) two-tower model: "
                              "each image against free-text labels, with the prompt ensemble it was trained with.",
                              epilog='example: florence-vl classify shape.png --labels "red circle,blue square"')
    classify.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    classify.add_argument("--labels", required=True, help="comma-separated labels, at least two")
    classify.add_argument("--top", type=int, default=3, help="labels to print per image (default: 3)")
    classify.add_argument("--model", default="nano", help="UniCL checkpoint directory (default: the shipped nano)")

    evaluate = sub.add_parser("eval", help="evaluate a model on a generated world split and print a table")
    evaluate.add_argument("stage", choices=["florence2", "unicl", "vl"],
                          help="florence2: every task metric on --data; unicl: zero-shot classification and "
                          "image-text retrieval on --split")
    evaluate.add_argument("--data", help="florence2 and vl: directory written by `florence-vl world generate`")
    evaluate.add_argument("--split", default="test", choices=["val", "test", "test-novel"],
                          help="unicl: the world split, generated in memory (default: test)")
    evaluate.add_argument("--n", type=int, default=200, help="unicl: number of scenes (default: 200)")
    evaluate.add_argument("--out", help="write the metrics as JSON here")
    evaluate.add_argument("--limit", type=int, help="florence2 and vl: evaluate only the first N images")
    # --beams keeps _add_model_options' default, the decoding users get from `tasks` and the published generation
    # config (3 beams); --beams 1 for greedy.
    _add_model_options(evaluate, beams_help="florence2: beam width, 1 = greedy (default: %(default)s, as `tasks`); "
                       "vl answers greedily")
    _add_output_options(evaluate)
    evaluate.set_defaults(max_new_tokens=256)

    from .vl.commands import add_chat_parser

    add_chat_parser(sub)
    return parser


def _load_florence2(args):
    from .florence2.runner import Florence2
    from .florence2.speed import fast_florence2
    from .models import resolve_model

    florence = Florence2.from_pretrained(resolve_model(args.model, "florence2"), dtype=args.dtype,
                                         allow_pickle=args.allow_pickle)
    # Every command that loads through here only runs the model, so it gets the inference fast path (copy-free
    # DaViT; in bf16 pre-packed weights) in the dtype chosen above.
    runner, _ = fast_florence2(florence, copy=False, dtype=florence.dtype)
    return runner


def _check_generation_args(args) -> None:
    if args.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    if args.beams < 1:
        raise InputError("--beams must be at least 1")
    if args.max_new_tokens < 1:
        raise InputError("--max-new-tokens must be at least 1")


def _format_result(result) -> str:
    lines = [f"{result.image or '<image>'}  {result.task}  ({result.image_size[0]}x{result.image_size[1]})"]
    out = result.output
    if isinstance(out, str):
        lines.append(f"  {out}")
        return "\n".join(lines)
    fmt = lambda xs: "[" + ", ".join(f"{x:.1f}" for x in xs) + "]"  # noqa: E731
    scores = out.get("scores") or []
    for key, label_key in (("bboxes", "labels"), ("bboxes", "bboxes_labels"), ("quad_boxes", "labels"),
                           ("polygons", "labels"), ("polygons", "polygons_labels")):
        if key in out and label_key in out:
            for i, (shape, label) in enumerate(zip(out[key], out[label_key])):
                score = f"  score {scores[i]:.3f}" if key == "bboxes" and i < len(scores) else ""
                if key == "polygons":
                    shape_text = f"{len(shape)} polygon(s), {sum(len(p) // 2 for p in shape)} points"
                else:
                    shape_text = fmt(shape)
                lines.append(f"  {label or '-'}  {shape_text}{score}")
    if len(lines) == 1:
        lines.append("  (nothing found)")
    return "\n".join(lines)


def cmd_tasks(args) -> int:
    from .florence2.tasks import build_prompt, get_task
    from .images import load_image

    _check_generation_args(args)
    task = get_task(args.task)
    images = [load_image(path) for path in args.images]  # every user mistake before the slow model load
    for image in images:
        build_prompt(task, args.text, args.region, image.size)
    from .florence2.runner import TaskRequest  # torch and transformers: only once the input is known good

    florence = _load_florence2(args)
    requests = [TaskRequest(path, task.token, args.text, args.region) for path in args.images]
    results = florence.run_requests(requests, batch_size=args.batch_size, num_beams=args.beams,
                                    max_new_tokens=args.max_new_tokens, progress=len(requests) > 8,
                                    stop_loops=args.stop_loops, box_score=args.box_score)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print("\n".join(_format_result(r) for r in results))
    if args.draw:
        from .viz import save_drawing

        out = Path(args.draw)
        for path, image, result in zip(args.images, images, results):
            target = out if len(results) == 1 else out.with_name(f"{out.stem}-{Path(path).stem}{out.suffix or '.png'}")
            save_drawing(image, result, target)
            print(f"drew {target}", file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    from .florence2 import predict_job as job
    from .florence2.tasks import build_prompt, get_task
    from .images import find_images

    if args.input is not None:
        from .vl.commands import cmd_predict_questions

        return cmd_predict_questions(args, _load_florence_vl)
    if not args.task or not args.images:
        raise InputError("predict needs --task and --images (a Florence-2 task over a folder) or --input "
                         "QUESTIONS.jsonl (Florence-VL answers)")
    if args.image_root is not None:
        raise InputError("--image-root goes with --input; Florence-2 tasks read --images DIR")
    args.format = args.format or "json"
    args.beams = 3 if args.beams is None else args.beams
    args.max_new_tokens = 1024 if args.max_new_tokens is None else args.max_new_tokens
    _check_generation_args(args)
    task = get_task(args.task)
    paths = find_images(args.images)
    if not paths:
        raise InputError(f"no images (.png, .jpg, ...) in {args.images}")
    if args.format == "coco" and task.parse in ("pure_text", "ocr"):
        raise InputError(f"{task.token} writes text; --format coco needs a detection or segmentation task")
    if Path(args.out).is_dir():
        raise InputError(f"--out {args.out} is a directory; give a file name")
    build_prompt(task, args.text, args.region, (1000, 1000))  # --text / --region fit the task
    image_ids = categories = None
    if args.coco_gt:
        gt = _read_json(args.coco_gt)
        image_ids = {str(Path(args.images) / im["file_name"]): im["id"] for im in gt.get("images", [])}
        categories = gt.get("categories")
    journal = job.journal_path(args.out, args.format)
    plan = job.plan_job(paths, task.token, journal, log=job.stderr_log)  # bad images named before the model loads
    if not plan.todo and not plan.done:
        raise InputError(f"none of the {len(paths)} images in {args.images} can be used "
                         f"(first: {plan.skipped[0][1]})")
    if plan.todo:
        if plan.done:
            print(f"resuming: {len(plan.done)} of {len(paths)} images already in {journal}", file=sys.stderr)
        job.run_job(_load_florence2(args), plan, journal, task=task.token, text=args.text, region=args.region,
                    batch_size=args.batch_size, num_beams=args.beams, max_new_tokens=args.max_new_tokens,
                    stop_loops=args.stop_loops, box_score=args.box_score, log=job.stderr_log)
    count = job.finish_job(args.format, Path(args.out), journal, paths, task.token, image_ids=image_ids,
                           categories=categories)
    skipped = f", skipped {len(plan.skipped)} unusable image(s) (named above)" if plan.skipped else ""
    print(f"wrote {args.out}: {count} results ({len(plan.done)} from before{skipped})", file=sys.stderr)
    return 0


def _load_florence_vl(args, source: str):
    from .vl.chat import FlorenceVL

    return FlorenceVL.from_pretrained(source, dtype=args.dtype, allow_pickle=args.allow_pickle)


def cmd_serve(args) -> int:
    from .serve.server import serve

    _check_generation_args(args)
    return serve(args, _load_florence2, lambda a, source: _load_florence_vl(a, source))


def cmd_convert(args) -> int:
    from .florence2.checkpoint import convert_checkpoint

    out = convert_checkpoint(args.source, args.out, allow_pickle=args.allow_pickle)
    print(f"wrote native Florence-2 checkpoint to {out}")
    return 0


def cmd_world(args) -> int:
    from .data.formats import write_split

    if args.n < 1:
        raise InputError("--n must be at least 1")
    paths = write_split(args.split, args.n, args.out, seed=args.seed, progress=True,
                        workers=args.workers or os.cpu_count() or 1)
    print(f"wrote {args.n} {args.split} images and {len(paths)} files to {args.out}")
    return 0


def cmd_train(args) -> int:
    if args.stage == "vl":
        from .train.vl import VLRecipe as Recipe, run
    elif args.stage == "unicl":
        from .florence.train import UniCLRecipe as Recipe, run
    elif args.stage == "crops":
        from .train.object_crops import ObjectCropRecipe as Recipe, run
    elif args.stage == "glyphs":
        from .train.text_glyphs import GlyphRecipe as Recipe, run
    else:
        from .train.florence2 import Florence2Recipe as Recipe, run
    from .train.recipe_file import read_recipe

    data = read_recipe(args.config)
    if args.out:
        data["out_dir"] = args.out
    if args.steps and args.stage != "vl":  # the VL recipe sets its steps per stage
        data.setdefault("loop", {})["steps"] = args.steps
    try:
        recipe = Recipe.from_dict(data)
    except (TypeError, ValueError) as error:
        raise InputError(f"{args.config}: {error}") from None
    print(f"wrote {run(recipe)}")
    return 0


def cmd_eval(args) -> int:
    if args.stage == "unicl":
        return _eval_unicl(args)
    if args.stage == "vl":
        from .vl.commands import cmd_eval_vl

        return cmd_eval_vl(args)
    from .eval.florence2_eval import evaluate_florence2, report_table, write_report

    _check_generation_args(args)
    if not args.data:
        raise InputError("eval florence2 needs --data DIR (make one with `florence-vl world generate`)")
    if not (Path(args.data) / "records.jsonl").exists():
        raise InputError(f"{args.data} is not a generated split (no records.jsonl); "
                         "make one with `florence-vl world generate`")
    florence = _load_florence2(args)
    result = evaluate_florence2(florence, args.data, limit=args.limit, batch_size=args.batch_size,
                                num_beams=args.beams, max_new_tokens=args.max_new_tokens,
                                stop_loops=args.stop_loops, box_score=args.box_score)
    print(report_table(result))
    if args.out:
        write_report(result, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _eval_unicl(args) -> int:
    from .eval.metrics import format_table
    from .florence.api import UniCLModel
    from .florence.zeroshot import evaluate_zero_shot

    if args.n < 1:
        raise InputError("--n must be at least 1")
    unicl = UniCLModel.from_pretrained(args.model)
    result = evaluate_zero_shot(unicl.model, unicl.tokenizer, args.split, n=args.n)
    result["model"] = unicl.source
    labels = {"shape_acc": "zero-shot shape accuracy (8-way)", "color_shape_acc": "zero-shot color-shape "
              "accuracy (64-way)", "novel_shape_acc": "  on novel color-shape pairs: shape",
              "novel_color_shape_acc": "  on novel color-shape pairs: color-shape",
              "i2t_r1": "image->text recall@1", "i2t_r5": "image->text recall@5",
              "t2i_r1": "text->image recall@1", "t2i_r5": "text->image recall@5"}
    rows = [{"metric": label, "value": result[key]} for key, label in labels.items() if key in result]
    print(f"UniCL {unicl.source} on {args.split}: {result['scenes']} scenes, {result.get('crops', 0)} object crops")
    print(format_table(rows, ["metric", "value"]))
    if args.out:
        from .eval.florence2_eval import write_report

        write_report(result, args.out)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_classify(args) -> int:
    from .florence.api import UniCLModel
    from .images import load_image

    labels = [label.strip() for label in args.labels.split(",")]
    images = [load_image(path) for path in args.images]      # every image checked before the model loads
    unicl = UniCLModel.from_pretrained(args.model)
    for path, result in zip(args.images, unicl.classify(images, labels)):
        ranked = sorted(result["scores"].items(), key=lambda kv: -kv[1])[: args.top]
        print(f"{path}: " + ", ".join(f"{label} {score:.2f}" for label, score in ranked))
    return 0


def cmd_chat(args) -> int:
    from .vl.commands import cmd_chat as chat

    return chat(args)


def _read_json(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not valid JSON ({error})") from None


COMMANDS = {"tasks": cmd_tasks, "predict": cmd_predict, "serve": cmd_serve, "convert": cmd_convert, "world": cmd_world,
            "train": cmd_train, "eval": cmd_eval,
            "classify": cmd_classify, "chat": cmd_chat}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return COMMANDS[args.command](args)
    except FlorenceVLError as error:
        _end_progress_bars()
        print(f"florence-vl {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _end_progress_bars()
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as error:  # the machine, not the input: disk full, permission denied on the output
        _end_progress_bars()
        print(f"florence-vl {args.command}: error: {error}", file=sys.stderr)
        return 1


def _end_progress_bars() -> None:
    """Close progress bars left open by a failed step, so the error starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
