"""Issue 7, bad inputs: a generated corpus of ~1,150 broken and awkward image files through every entry point.

Each case must end in a clear InputError (CLI: exit 2 and one line on stderr) or a correct result: the
upright picture a viewer shows (pixels checked), and for EXIF-rotated and far-from-square images, boxes in
that picture's pixel frame. The frame is checked with a stand-in model that finds a red marker in the
pixels it is given and writes its box as <loc_k> tokens: the box that comes back must sit on the marker in
the displayed image, and so must the drawing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import florence_vl.cli as cli
from bad_inputs import Case, marker_box, pattern, stored_for, write_corpus
from florence_vl.errors import InputError
from florence_vl.florence2.runner import Florence2
from florence_vl.images import load_image
from florence_vl.viz import draw_result, label_color

PER_CASE_SECONDS = 10


@contextmanager
def time_limit(seconds: int, what: str):
    """A hang becomes a failure naming the case (SIGALRM: the main thread, on Unix)."""
    def expired(signum, frame):
        raise TimeoutError(f"{what} took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> list[tuple[Case, Path]]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def _pixels_problem(case: Case, image: Image.Image) -> str | None:
    if image.mode != "RGB" or image.width < 1 or image.height < 1:
        return f"got mode {image.mode} size {image.size}"
    if case.size is not None and image.size != case.size:
        return f"size {image.size}, expected {case.size}"
    if case.pixels is None:
        return None
    got = np.asarray(image).astype(int)
    if got.shape != case.pixels.shape:
        return f"shape {got.shape}, expected {case.pixels.shape}"
    diff = float(np.abs(got - case.pixels).mean())
    return None if diff <= case.tolerance else f"mean pixel difference {diff:.2f} > {case.tolerance}"


def _outcome_problem(case: Case, image: Image.Image | None, error: str | None) -> str | None:
    if error is not None:
        if case.expect == "ok":
            return f"expected an image, got error: {error}"
        if "\n" in error or not error.strip():
            return f"error is not one line: {error!r}"
        return None
    if case.expect == "error":
        return f"expected an error, got an image {image.size}"
    return _pixels_problem(case, image)


# --------------------------------------------------------------------------------------------- the corpus


def test_the_corpus_is_large_and_covers_every_kind(cases):
    kinds = {c.kind for c, _ in cases}
    assert len(cases) >= 1000
    assert kinds == {"not-image", "truncated", "corrupt", "mode", "tiny", "zero-size", "bomb", "exif", "animated",
                     "aspect"}
    suffixes = {p.suffix for _, p in cases}
    assert {".png", ".jpg", ".webp", ".gif"} <= suffixes
    assert sum(c.name.startswith("exif-") and c.expect == "ok" and "invalid" not in c.name for c, _ in cases) == 48


def test_orientation_oracle_agrees_with_the_exif_definition():
    """stored_for(display, k) then the EXIF meaning of k gives back `display`, for every k (no Pillow)."""
    display = np.arange(2 * 3 * 3).reshape(2, 3, 3)  # H=2, W=3
    s = {k: stored_for(display, k) for k in range(1, 9)}
    assert (s[1][0, 0] == display[0, 0]).all()                    # 1: stored (0,0) is displayed top-left
    assert (s[2][0, 0] == display[0, -1]).all()                   # 2: top-right
    assert (s[3][0, 0] == display[-1, -1]).all()                  # 3: bottom-right
    assert (s[4][0, 0] == display[-1, 0]).all()                   # 4: bottom-left
    assert (s[5][0, 0] == display[0, 0]).all() and (s[5][0, 1] == display[1, 0]).all()    # 5: row 0 = left side
    assert (s[6][0, 0] == display[0, -1]).all() and (s[6][0, 1] == display[1, -1]).all()  # 6: row 0 = right side
    assert (s[7][0, 0] == display[-1, -1]).all() and (s[7][0, 1] == display[0, -1]).all()  # 7: right, from bottom
    assert (s[8][0, 0] == display[-1, 0]).all() and (s[8][0, 1] == display[0, 0]).all()    # 8: left, from bottom
    assert all(s[k].shape == (3, 2, 3) for k in (5, 6, 7, 8))


# --------------------------------------------------------------------------------------------- Python API


def test_load_image_on_every_case(cases):
    problems = []
    for case, path in cases:
        image = error = None
        try:
            with time_limit(PER_CASE_SECONDS, case.name):
                image = load_image(path)
        except InputError as e:
            error = str(e)
            if path.name not in error and case.expect != "ok":
                problems.append(f"{case.name}: the error does not name the file: {error}")
        except Exception as e:  # noqa: BLE001 - any other exception is the bug this test looks for
            problems.append(f"{case.name}: crashed with {type(e).__name__}: {e}")
            continue
        problem = _outcome_problem(case, image, error)
        if problem:
            problems.append(f"{case.name}: {problem}")
    assert not problems, f"{len(problems)} of {len(cases)} cases failed:\n" + "\n".join(problems[:30])


def test_load_image_accepts_pil_images_in_every_mode(cases):
    """The API also takes PIL images: the same upright RGB result as from the file, nothing left open."""
    for case, path in cases:
        if case.expect != "ok":
            continue
        with Image.open(path) as opened:
            assert _pixels_problem(case, load_image(opened)) is None, case.name


def test_bomb_guard_reads_the_header_only(cases):
    """No bomb is decoded: all of them together stay far below the memory their pixels would need."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    bombs = [(c, p) for c, p in cases if c.kind == "bomb"]
    for case, path in bombs:
        with pytest.raises(InputError, match="too large|cannot read|not an image"):
            with time_limit(PER_CASE_SECONDS, case.name):
                load_image(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB


def test_bomb_guard_follows_max_image_pixels(tmp_path, monkeypatch):
    """A real (fully encoded) image over a lowered limit is refused, between 1x and 2x the limit too, where
    Pillow itself only warns; under the limit it loads."""
    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200), (10, 20, 30)).save(path)
    for limit, refused in ((20_000, True), (29_999, True), (50_000, True), (60_000, False), (None, False)):
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        if refused:
            with pytest.raises(InputError, match="too large"):
                load_image(path)
            assert limit is not None and 300 * 200 > limit
        else:
            assert load_image(path).size == (300, 200)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    with pytest.raises(InputError, match="too large"):
        load_image(Image.new("RGB", (300, 200)))  # a PIL image given directly is held to the same limit


def test_paths_that_are_not_image_files(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would block forever
    cases = {
        tmp_path / "missing.png": "image not found",
        tmp_path: "is a directory",
        fifo: "not a regular file",
        Path("/dev/zero"): "not a regular file",
        tmp_path / ("x" * 300 + ".png"): "cannot open",            # ENAMETOOLONG
        str(tmp_path / "a\0b.png"): "image not found",             # NUL in the name
        tmp_path / "two\nlines.png": "image not found",            # the message stays on one line
    }
    for source, message in cases.items():
        with time_limit(5, str(source)[:40]):
            with pytest.raises(InputError, match=message) as info:
                load_image(source)
        assert "\n" not in str(info.value) and "\0" not in str(info.value)
    for wrong in (None, 3, b"bytes.png", ["a.png"]):
        with pytest.raises(InputError, match="file path or a PIL image"):
            load_image(wrong)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    """Regression: a 16-bit grey PNG came out all white (Pillow clips I;16 to 255 when converting to RGB)."""
    grey = np.full((4, 5), 32896, np.uint16)  # 128.5 * 256
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    assert np.asarray(load_image(tmp_path / "grey16.png"))[0, 0].tolist() == [128, 128, 128]
    half = np.full((4, 5), 0.5, np.float32)
    assert np.asarray(load_image(Image.fromarray(half, "F")))[0, 0].tolist() == [128, 128, 128]
    wide = np.array([[-1000, 0, 1000]], np.int32)  # outside 0..65535: stretched over its range
    assert np.asarray(load_image(Image.fromarray(wide, "I")))[0, :, 0].tolist() == [0, 128, 255]


def test_animated_files_are_closed_after_loading(cases, recwarn):
    import gc
    import warnings

    warnings.simplefilter("always", ResourceWarning)
    for case, path in cases:
        if case.kind == "animated":
            load_image(path)
    gc.collect()
    assert not [w for w in recwarn if issubclass(w.category, ResourceWarning)]


# --------------------------------------------------------------------------------------------- model frame


class MarkerModel:
    """Stands in for model.generate: finds the red marker in the pixel values it is given (the model's own
    view of the image) and writes "marker<loc_x0><loc_y0><loc_x1><loc_y1>", with token scores."""

    def __init__(self, florence: Florence2):
        self.florence = florence
        processor = florence.image_processor
        self.mean = torch.tensor(processor.image_mean).view(3, 1, 1)
        self.std = torch.tensor(processor.image_std).view(3, 1, 1)
        self.seen: list[list[int]] = []

    def bins(self, pixels: torch.Tensor) -> list[int]:
        rgb = pixels.float() * self.std + self.mean                    # back to 0..1
        red = (rgb[0] > 0.75) & (rgb[1] < 0.25) & (rgb[2] < 0.25)
        rows, cols = red.sum(1), red.sum(0)
        if rows.max() == 0:
            return [0, 0, 999, 999]
        ys = torch.nonzero(rows >= 0.5 * rows.max()).flatten()
        xs = torch.nonzero(cols >= 0.5 * cols.max()).flatten()
        side_y, side_x = red.shape
        edges = [xs.min() / side_x, ys.min() / side_y, (xs.max() + 1) / side_x, (ys.max() + 1) / side_y]
        return [min(999, int(float(e) * 1000)) for e in edges]

    def __call__(self, input_ids=None, attention_mask=None, pixel_values=None, generation_config=None, **_):
        tokenizer = self.florence.tokenizer
        text_config = self.florence.model.config.text_config
        rows = []
        if pixel_values is None:          # the runner hands generate the encoder outputs, not the pixels
            pixel_values = self.pixel_values
        for pixels in pixel_values:
            bins = self.bins(pixels)
            self.seen.append(bins)
            text = "marker" + "".join(f"<loc_{b}>" for b in bins)
            rows.append([text_config.decoder_start_token_id, tokenizer.bos_token_id,
                         *tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id])
        width = max(map(len, rows))
        sequences = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
        vocab = self.florence.model.get_output_embeddings().weight.shape[0]
        scores = []
        for t in range(1, width):
            logits = torch.zeros(len(rows), vocab)
            logits[torch.arange(len(rows)), sequences[:, t]] = 20.0
            scores.append(logits)
        return SimpleNamespace(sequences=sequences, scores=tuple(scores))


@pytest.fixture()
def marker_florence(tiny_florence2, monkeypatch):
    fake = MarkerModel(tiny_florence2)
    encode = tiny_florence2.encoder_outputs

    def encoder_outputs(inputs, *args, **kwargs):  # the fake decoder reads the marker from these pixels
        fake.pixel_values = inputs["pixel_values"]
        return encode(inputs, *args, **kwargs)

    monkeypatch.setattr(tiny_florence2, "encoder_outputs", encoder_outputs)
    monkeypatch.setattr(tiny_florence2.model, "generate", fake)
    return tiny_florence2


def _frame_problem(case: Case, box: list[float], image_size: tuple[int, int], side: int) -> str | None:
    """The returned box must be the marker's box in the displayed image, to the model's resolution."""
    w, h = image_size
    if case.size is not None and (w, h) != case.size:
        return f"image_size {image_size}, displayed size is {case.size}"
    expected = marker_box(w, h)
    for got, want, extent in zip(box, expected, (w, h, w, h)):
        slack = 1.5 / side + 1 / extent + 0.002  # blur of the resize: a processed and a source pixel; a bin
        if abs(got / extent - want / extent) > slack:
            return f"box {[round(v, 1) for v in box]} is not on the marker {list(expected)} in a {w}x{h} image"
    return None


def _drawing_problem(image: Image.Image, result) -> str | None:
    drawn = draw_result(image, result)
    if drawn.size != image.size:
        return f"drawing is {drawn.size}, image {image.size}"
    x0, y0, x1, y1 = result.output["bboxes"][0]
    if x1 - x0 < 12 or y1 - y0 < 24:  # too small to find an edge the label does not cover
        return None
    corner = (int(x0), int(np.ceil(y1)) - 1)  # bottom-left corner of the outline
    if drawn.getpixel(corner) != label_color("marker"):
        return f"no box outline at {corner} in the drawing"
    return None


def _frame_cases(cases):
    return [(c, p) for c, p in cases if c.kind in ("exif", "aspect") and c.expect == "ok"]


def test_boxes_and_drawings_are_in_the_displayed_frame(marker_florence, cases):
    """All 8 EXIF orientations (PNG, WebP, JPEG; landscape and portrait), invalid orientation values and
    images from 1x400 to 16383x1: the model sees the displayed picture and its boxes land on the marker."""
    picked = _frame_cases(cases)
    results = marker_florence.run([p for _, p in picked], "<OD>", num_beams=1, batch_size=16)
    side = marker_florence.image_size
    problems = []
    for (case, path), result in zip(picked, results):
        image = load_image(path)
        assert result.image_size == image.size
        problem = _frame_problem(case, result.output["bboxes"][0], result.image_size, side) or \
            _drawing_problem(image, result)
        if problem:
            problems.append(f"{case.name}: {problem}")
    assert len(picked) >= 70 and not problems, "\n".join(problems)


def test_a_frame_error_would_be_caught(marker_florence, tmp_path):
    """The check has teeth: an image whose EXIF rotation is ignored puts the marker somewhere else."""
    display = pattern(40, 24, seed=5)
    for k in (2, 3, 4, 5, 6, 7, 8):
        stored = stored_for(display, k)
        path = tmp_path / f"k{k}.png"
        Image.fromarray(stored).save(path)  # no EXIF: the stored picture is what is shown
        [result] = marker_florence.run([path], "<OD>", num_beams=1)
        case = Case("k", ".png", b"", "exif", "ok")  # judged by the marker alone
        assert _frame_problem(case, result.output["bboxes"][0], result.image_size, 64) is not None, k


def test_tiny_model_on_a_sample_of_the_corpus(tiny_florence2, cases):
    """The real (random, tiny) model on every kind of readable file, in batches: one result each, every
    coordinate inside its image; and every unreadable file a clear InputError."""
    readable = [(c, p) for c, p in cases if c.expect == "ok"][::3]
    results = tiny_florence2.run([p for _, p in readable], "<REGION_PROPOSAL>", num_beams=1, max_new_tokens=13,
                                 batch_size=8)
    for (case, path), result in zip(readable, results):
        w, h = load_image(path).size
        assert result.image_size == (w, h), case.name
        for x0, y0, x1, y1 in result.output["bboxes"]:
            assert 0 <= min(x0, x1) and max(x0, x1) <= w and 0 <= min(y0, y1) and max(y0, y1) <= h, case.name
    unreadable = [(c, p) for c, p in cases if c.expect == "error"][::4]
    for case, path in unreadable:
        with pytest.raises(InputError):
            tiny_florence2.run([path], "<OD>", num_beams=1, max_new_tokens=4)
    assert len(readable) >= 40 and len(unreadable) >= 25


# --------------------------------------------------------------------------------------------- command line


@pytest.fixture()
def cli_marker(marker_florence, monkeypatch):
    monkeypatch.setattr(cli, "_load_florence2", lambda args: marker_florence)
    return marker_florence


def test_cli_tasks_on_every_case(cli_marker, cases, capsys, tmp_path):
    """`florence-vl tasks FILE --task OD --json` in process on each file; frame cases also --draw."""
    import json

    problems = []
    side = cli_marker.image_size
    for case, path in cases:
        draw = case.kind in ("exif", "aspect") and case.expect == "ok"
        argv = ["tasks", str(path), "--task", "OD", "--json", "--beams", "1", "--max-new-tokens", "8"]
        if draw:
            argv += ["--draw", str(tmp_path / f"{case.name}.png")]
        try:
            with time_limit(PER_CASE_SECONDS, case.name):
                code = cli.main(argv)
        except BaseException as e:  # noqa: BLE001 - SystemExit, a crash: all failures here
            problems.append(f"{case.name}: raised {type(e).__name__}: {e}")
            continue
        out, err = capsys.readouterr()
        if code == 2:
            lines = err.strip().splitlines()
            if case.expect == "ok" or len(lines) != 1 or not lines[0].startswith("florence-vl tasks: error: "):
                problems.append(f"{case.name}: exit 2 with {err!r}")
            continue
        if code != 0:
            problems.append(f"{case.name}: exit {code}: {err!r}")
            continue
        [record] = json.loads(out)
        image = load_image(path)
        if case.expect == "error":
            problems.append(f"{case.name}: expected an error, got a result")
        elif tuple(record["image_size"]) != image.size:
            problems.append(f"{case.name}: image_size {record['image_size']} != {image.size}")
        elif draw:
            box = record["result"]["<OD>"]["bboxes"][0]
            problem = _frame_problem(case, box, image.size, side)
            with Image.open(tmp_path / f"{case.name}.png") as drawn:
                if drawn.size != image.size:
                    problem = problem or f"drawing is {drawn.size}"
            if problem:
                problems.append(f"{case.name}: {problem}")
    assert not problems, f"{len(problems)} of {len(cases)} failed:\n" + "\n".join(problems[:30])


def test_cli_predict_names_and_skips_every_bad_image(cli_marker, cases, tmp_path, capsys):
    """A folder of mixed files: each unusable one named on one stderr line and skipped, the rest predicted;
    a folder of nothing usable: exit 2 and one line, before any model loads."""
    import json
    import shutil

    mixed, bad_only = tmp_path / "mixed", tmp_path / "bad"
    mixed.mkdir()
    bad_only.mkdir()
    bad = [(c, p) for c, p in cases if c.expect == "error"][::3]
    good = [(c, p) for c, p in cases if c.expect == "ok"][:10]
    for _, path in bad + good:
        shutil.copy(path, mixed / path.name)
    for _, path in bad:
        shutil.copy(path, bad_only / path.name)
    out = tmp_path / "p.json"
    with time_limit(60, "predict"):
        code = cli.main(["predict", "--task", "OD", "--images", str(mixed), "--out", str(out), "--beams", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    for _, path in bad:
        assert sum(path.name in line for line in err.splitlines()) == 1, path.name
    assert sorted(Path(r["image"]).name for r in json.loads(out.read_text())) == sorted(p.name for _, p in good)
    cli_marker.model.generate = None  # the model must not run again
    assert cli.main(["predict", "--task", "OD", "--images", str(bad_only), "--out", str(tmp_path / "q.json")]) == 2
    assert "none of the" in capsys.readouterr().err
    assert cli.main(["predict", "--task", "OD", "--images", str(mixed), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_cli_predict_over_every_readable_case(cli_marker, cases, tmp_path):
    import json
    import shutil

    folder = tmp_path / "readable"
    folder.mkdir()
    readable = [(c, p) for c, p in cases if c.expect == "ok"]
    for _, path in readable:
        shutil.copy(path, folder / path.name)
    out = tmp_path / "preds.json"
    assert cli.main(["predict", "--task", "OD", "--images", str(folder), "--out", str(out), "--beams", "1",
                     "--batch-size", "16"]) == 0
    records = {Path(r["image"]).name: r for r in json.loads(out.read_text())}
    assert len(records) == len(readable)
    for case, path in readable:
        record = records[path.name]
        assert tuple(record["image_size"]) == load_image(path).size, case.name
        if case.kind in ("exif", "aspect"):
            assert _frame_problem(case, record["result"]["<OD>"]["bboxes"][0], tuple(record["image_size"]),
                                  cli_marker.image_size) is None, case.name


def test_cli_regions_that_are_not_finite_numbers(tmp_path, capsys, monkeypatch):
    """Regression: --region 0,0,inf,inf reached the coordinate codec and ended in a ValueError traceback."""
    monkeypatch.setattr(cli, "_load_florence2", lambda args: pytest.fail("the model must not load"))
    path = tmp_path / "i.png"
    Image.new("RGB", (40, 30)).save(path)
    for region in ("0,0,inf,inf", "-inf,0,5,5", "nan,0,5,5", "0,0,1e400,5", "1,2,3", "a,b,c,d", "5,5,1,1"):
        assert cli.main(["tasks", str(path), "--task", "REGION_TO_OCR", f"--region={region}"]) == 2, region
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "region" in err, (region, err)


def test_cli_write_failures_are_one_line(cli_marker, tmp_path, capsys, monkeypatch):
    """Out of disk (or any OS error) writing the results: one line and exit 1, not a traceback."""
    import errno

    import florence_vl.florence2.export as export

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(folder / "a.png")

    def full(obj, f, **kwargs):  # half the file is written, then the disk is full
        f.write('[{"image": "a.png", "res')
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "p.json"))

    monkeypatch.setattr(export.json, "dump", full)
    code = cli.main(["predict", "--task", "OD", "--images", str(folder), "--out", str(tmp_path / "p.json"),
                     "--beams", "1"])
    err = capsys.readouterr().err.strip()  # progress bars, then the error
    assert code == 1 and "Traceback" not in err
    assert err.splitlines()[-1] == f"florence-vl predict: error: [Errno 28] No space left on device: '{tmp_path / 'p.json'}'"
    assert not (tmp_path / "p.json").exists() and not list(tmp_path.glob(".p.json.*tmp"))  # no half file left


def _subprocess_cli(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="default")
    return subprocess.run([sys.executable, "-m", "florence_vl.cli", *argv], capture_output=True, text=True,
                          env=env, timeout=120)


def test_real_processes_exit_2_with_one_line(cases, tmp_path):
    """A few real `florence-vl` processes: exit code 2, one stderr line, no traceback, no warnings."""
    picks = [next(p for c, p in cases if c.kind == kind and p.suffix == suffix and _fails(p))
             for kind, suffix in (("truncated", ".png"), ("bomb", ".png"), ("not-image", ".webp"),
                                  ("corrupt", ".gif"), ("zero-size", ".jpg"))]
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    weird = tmp_path / "new\nline.png"
    for path in picks + [fifo, weird]:
        proc = _subprocess_cli("tasks", str(path), "--task", "OD")
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("florence-vl tasks: error: "), \
            (path, proc.stderr)
    good = next(p for c, p in cases if c.expect == "ok")
    proc = _subprocess_cli("tasks", str(good), "--task", "REGION_TO_OCR", "--region", "0,0,inf,1")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def _fails(path: Path) -> bool:
    try:
        load_image(path)
    except InputError:
        return True
    return False
