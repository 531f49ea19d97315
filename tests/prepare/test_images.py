"""Image file checks: a file_name from an annotation json never reaches outside its image folder."""
import json
import os
from pathlib import Path

import pytest

from pipeline.prepare.cleaning import clean_split
from pipeline.utils.errors import PipelineError
from pipeline.prepare.images import check_image, contained_path
from tests import crafted_coco

CATEGORIES = crafted_coco.CATEGORIES


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """``tmp/images`` with one good image, and a good image outside it at ``tmp/secret.jpg``."""
    images = tmp_path / "images"
    images.mkdir()
    crafted_coco.picture().save(images / "ok.jpg")
    crafted_coco.picture().save(tmp_path / "secret.jpg")
    (images / "inside_link.jpg").symlink_to(images / "ok.jpg")
    (images / "outside_link.jpg").symlink_to(tmp_path / "secret.jpg")
    (images / "folder.jpg").mkdir()
    os.mkfifo(images / "pipe.jpg")  # opening it for reading would block forever
    return images


UNSAFE = {
    "absolute": "{secret}",
    "parent": "../secret.jpg",
    "nested_parent": "sub/../../secret.jpg",
    "windows_parent": "..\\secret.jpg",
    "symlink_out": "outside_link.jpg",
}


@pytest.mark.parametrize("name", UNSAFE)
def test_names_escaping_the_folder_are_refused(folder, name):
    file_name = UNSAFE[name].format(secret=folder.parent / "secret.jpg")
    path, drop = contained_path(folder, file_name)
    assert path is None and drop.reason == "unsafe_path"


@pytest.mark.parametrize("file_name, reason", [("folder.jpg", "not_a_file"), ("pipe.jpg", "not_a_file"),
                                               ("", "not_a_file"), ("nothing.jpg", "missing_file")])
def test_anything_but_a_regular_file_is_refused(folder, file_name, reason):
    path, drop = contained_path(folder, file_name)
    assert path is None and drop.reason == reason


def test_regular_files_and_links_inside_the_folder_pass(folder):
    for file_name in ("ok.jpg", "inside_link.jpg", "./ok.jpg"):
        path, drop = contained_path(folder, file_name)
        assert drop is None and path == (folder / "ok.jpg").resolve()
    image = {"file_name": "inside_link.jpg", "width": crafted_coco.WIDTH, "height": crafted_coco.HEIGHT}
    assert check_image(folder, image) == ("RGB", None)


def split_naming(file_names: list[str]) -> dict:
    images = [{"id": i + 1, "file_name": name, "width": crafted_coco.WIDTH, "height": crafted_coco.HEIGHT}
              for i, name in enumerate(file_names)]
    annotations = [crafted_coco.ann(i + 1, i + 1, [4, 4, 16, 16]) for i in range(len(file_names))]
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def test_unsafe_and_irregular_entries_are_counted_drops(folder):
    names = ["ok.jpg", str(folder.parent / "secret.jpg"), "../secret.jpg", "outside_link.jpg", "pipe.jpg",
             "folder.jpg"]
    result = clean_split(split_naming(names), folder, CATEGORIES, keep_empty=False, max_images=None, strict=False)
    assert [image["file_name"] for image in result.dataset["images"]] == ["ok.jpg"]
    reasons = {d["file_name"]: d["reason"] for d in result.dropped_images}
    assert reasons == {names[1]: "unsafe_path", "../secret.jpg": "unsafe_path", "outside_link.jpg": "unsafe_path",
                       "pipe.jpg": "not_a_file", "folder.jpg": "not_a_file"}
    assert str(folder) not in json.dumps(result.dropped_images)  # the summary records no machine path


def test_strict_fails_on_an_unsafe_name(folder):
    with pytest.raises(PipelineError, match=r"instances_x\.json image 2: unsafe_path: '\.\./secret\.jpg'"):
        clean_split(split_naming(["ok.jpg", "../secret.jpg"]), folder, CATEGORIES, keep_empty=False,
                    max_images=None, strict=True, source="instances_x.json")
