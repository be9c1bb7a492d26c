"""Regressions: what tests/test_serve_fuzz.py found, each pinned as an explicit case (fixed in florence_vl/serve/)."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from florence_vl.serve.errors import ApiError
from florence_vl.serve.image_source import decode_image_source


@pytest.fixture(scope="module")
def allowed(tmp_path_factory):
    root = tmp_path_factory.mktemp("allowed")
    Image.new("RGB", (8, 6)).save(root / "photo.png")
    (root / "sub").mkdir()
    os.symlink(root / "loop", root / "loop")                 # a link to itself
    os.symlink(root / "sub" / "b", root / "sub" / "a")       # a -> b -> a
    os.symlink(root / "sub" / "a", root / "sub" / "b")
    return root


def refused(value, allowed):
    with pytest.raises(ApiError) as raised:
        decode_image_source(value, allow_dirs=(allowed,), max_pixels=10_000)
    return raised.value


# 1. A path inside the allow-list that the file system cannot look up (a name over NAME_MAX, a symlink loop)
#    ended in an uncaught OSError / RuntimeError: 500 internal_error. Now 400 bad_image, one short line.
@pytest.mark.parametrize("value", ["a" * 5000, "sub/" + "b" * 300 + ".png", "x/" * 3000 + "y.png", "loop",
                                   "loop/x.png", "sub/a", "sub/b/c.png", "file://ROOT/loop"])
def test_paths_the_file_system_cannot_look_up_are_a_400(allowed, value):
    error = refused(value.replace("ROOT", str(allowed)), allowed)
    assert (error.status, error.code) == (400, "bad_image"), error.message
    assert "cannot be read" in error.message and len(error.message) < 250 and "\n" not in error.message


# 2. A path with a newline went back inside the one-line error message ("image not found: a\nb").
@pytest.mark.parametrize("value", ["a\nb.png", "sub/x\r\ny.png", "missing\n.png"])
def test_error_messages_about_paths_stay_on_one_line(allowed, value):
    error = refused(value, allowed)
    assert (error.status, error.code) == (400, "image_not_found") and "\n" not in error.message
    assert "\r" not in error.message


def test_the_good_path_still_reads_and_outside_is_still_403(allowed):
    assert decode_image_source("photo.png", allow_dirs=(allowed,), max_pixels=10_000).size == (8, 6)
    assert refused("../" * 3 + "etc/passwd", allowed).status == 403
