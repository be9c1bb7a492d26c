"""Recipe files: every shipped config builds its recipe, `base` chains merge as documented, and file mistakes
are one-line errors."""
from pathlib import Path

import pytest

from florence_vl.cli import main
from florence_vl.errors import InputError
from florence_vl.florence.train import UniCLRecipe
from florence_vl.train.florence2 import Florence2Recipe
from florence_vl.train.object_crops import ObjectCropRecipe
from florence_vl.train.recipe_file import read_recipe
from florence_vl.train.text_glyphs import GlyphRecipe
from florence_vl.train.vl import VLRecipe

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))


def _recipe_class(name: str):
    if name.startswith("unicl"):
        return UniCLRecipe
    if name.startswith("florence-vl"):
        return VLRecipe
    if name.startswith("florence2-nano-glyphs"):
        return GlyphRecipe
    return ObjectCropRecipe if name == "florence2-nano-crops.yaml" else Florence2Recipe


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_builds_its_recipe(path):
    recipe = _recipe_class(path.name).from_dict(read_recipe(path))
    assert recipe.out_dir.startswith("runs/")


def test_no_two_configs_write_the_same_run():
    out_dirs = [read_recipe(path)["out_dir"] for path in CONFIGS]
    assert len(set(out_dirs)) == len(out_dirs) == len(CONFIGS) > 10


def test_a_later_names_stage_is_stage_3c_with_its_own_scenes_steps_and_seed():
    stage_3c = read_recipe(CONFIGS[0].parent / "florence2-nano-names-3.yaml")
    stage_3m = read_recipe(CONFIGS[0].parent / "florence2-nano-names-13.yaml")
    changed = {k for k in stage_3c if stage_3c[k] != stage_3m[k]}
    assert changed == {"out_dir", "init_from", "first_scene", "loop"}
    assert stage_3m["task_weights"] == stage_3c["task_weights"] and stage_3m["task_weights"]["<OD>"] == 4.0
    assert stage_3m["loop"] == {**stage_3c["loop"], "steps": 3600, "save_every": 400, "seed": 12}


def test_base_is_relative_to_the_file_and_loop_merges_key_by_key(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.yaml").write_text("geometry: nano\ntask_weights: {x: 1.0, y: 2.0}\nloop: {steps: 10, lr: 0.1}\n")
    (tmp_path / "b.yaml").write_text("base: sub/a.yaml\ntask_weights: {x: 3.0}\nloop: {steps: 20}\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\nseed_note: c\n")
    assert read_recipe(tmp_path / "c.yaml") == {"geometry": "nano", "task_weights": {"x": 3.0},
                                                "loop": {"steps": 20, "lr": 0.1}, "seed_note": "c"}


@pytest.mark.parametrize("files, message", [
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, "comes back to this file"),
    ({"a.yaml": "base: missing.yaml\n"}, "recipe not found"),
    ({"a.yaml": "base: [b.yaml]\n"}, "base must be the file name"),
    ({"a.yaml": "base: b.yaml\nloop: 5\n", "b.yaml": "loop: {steps: 1}\n"}, "loop must be a mapping"),
    ({"a.yaml": "- 1\n- 2\n"}, "must hold a mapping"),
    ({"a.yaml": "loop: {steps: [1\n"}, "not valid YAML"),
])
def test_recipe_file_mistakes(tmp_path, files, message, capsys):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=message):
        read_recipe(tmp_path / "a.yaml")
    assert main(["train", "florence2", str(tmp_path / "a.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
