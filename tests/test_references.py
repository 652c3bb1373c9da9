"""Reference datasets as people export them (cases 03, 04, 07, 08, 18): ids of any JSON type,
duplicates, Windows file names, images missing on disk, category names that differ from the
job's class names. Unit level: ``build_pool`` reads and checks everything before a job writes."""

import json
import os

import pytest
from PIL import Image

from engine.errors import UserError
from engine.job.prompts import build_pool
from engine.spec import parse_spec

from .conftest import BASE_SPEC

FIELD = os.path.join(os.path.dirname(__file__), "fixtures", "field")


STREET = {"generator": {"name": "diffusion", "params": {"model": "embedded:shapes"}}, "label_head": {"name": "none"}}


def references(tmp_path, coco, classes=("circle", "square"), images="images", present=None, job=None, **prompts):
    """A references spec over ``coco`` (a fixture name or a dict), with each listed image written
    under tmp_path/images (or only those in ``present``)."""
    if isinstance(coco, str):
        coco = json.load(open(os.path.join(FIELD, coco)))
    tmp_path.mkdir(parents=True, exist_ok=True)
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps(coco))
    for image in coco["images"]:
        name = os.path.basename(str(image["file_name"]).replace("\\", "/"))
        if present is None or name in present:
            (tmp_path / images).mkdir(exist_ok=True)
            Image.new("RGB", (8, 8)).save(tmp_path / images / name)
    return parse_spec({**BASE_SPEC, "output": str(tmp_path / "out"), "classes": list(classes), "lower_bound": 1,
                       "prompts": {"source": "references", "annotations": str(annotations),
                                   "images": str(tmp_path / images), **prompts}, **(job or {})})


def pool_of(spec, inputs=None):
    return [(item.reference_id, item.classes, item.prompt) for item in build_pool(spec, inputs)]


def small_coco(image_ids, category_ids=(1, 2), annotations=None):
    return {"images": [{"id": i, "file_name": f"img{k}.png"} for k, i in enumerate(image_ids)],
            "categories": [{"id": c, "name": name} for c, name in zip(category_ids, ("circle", "square"))],
            "annotations": annotations if annotations is not None else
            [{"id": k, "image_id": i, "category_id": category_ids[k % 2]} for k, i in enumerate(image_ids)]}


def test_string_category_ids_match_integer_ones(tmp_path):
    """Case 03: category_id "0" names the category with id 0; the pool is the integer file's."""
    strings = pool_of(references(tmp_path / "a", "string_category_ids.json"))
    assert strings == pool_of(references(tmp_path / "b", "int_category_ids.json"))
    assert [classes for _, classes, _ in strings] == [("circle",), ("square",), ("circle",), ("square",)]
    assert all("with  in" not in prompt for _, _, prompt in strings)


def test_mixed_image_id_types_are_one_id_space(tmp_path):
    """Case 04: string (Labelbox) and integer ids in one file; ids compare by value, numbers first."""
    pool = pool_of(references(tmp_path, "mixed_image_ids.json"))
    assert [ref for ref, _, _ in pool] == ["10", "11", "ck0a1b2c3d4e5f6g7h8i9j0k1", "ck0a1b2c3d4e5f6g7h8i9j0k2"]
    assert all(classes for _, classes, _ in pool)


def test_integral_float_and_string_ids_equal_integers(tmp_path):
    coco = small_coco([1.0, "2"], category_ids=["1", 2.0])
    coco["annotations"] = [{"image_id": " 001", "category_id": 1}, {"image_id": 2, "category_id": "2.0"}]
    assert pool_of(references(tmp_path, coco)) == [
        ("1", ("circle",), "A photograph, with circle in the photograph."),
        ("2", ("square",), "A photograph, with square in the photograph.")]


@pytest.mark.parametrize("bad, shown", [(None, "null"), (True, "a boolean"), (1.5, "a fraction"), ([1], "a list")])
def test_an_id_of_another_type_is_refused_naming_it(tmp_path, bad, shown):
    coco = small_coco([1, 2])
    coco["annotations"][1]["image_id"] = bad
    with pytest.raises(UserError) as info:
        build_pool(references(tmp_path, coco))
    assert str(info.value).startswith(f"prompts.annotations: annotations[1].image_id: expected an integer or "
                                      f"string id, got {bad!r} ({shown})")


def test_a_file_that_is_not_a_coco_object_is_refused(tmp_path):
    spec = references(tmp_path, small_coco([1]))
    (tmp_path / "instances.json").write_text("[]")
    with pytest.raises(UserError, match=r"prompts.annotations: expected a COCO object with 'images', 'annotations' "
                                        r"and 'categories', got a list in"):
        build_pool(spec)


def test_duplicate_image_ids(tmp_path, capsys):
    """The same id twice with the same file is read once (warned); with two files it is refused."""
    coco = small_coco([1, 2])
    coco["images"].append({"id": "1", "file_name": "img0.png"})
    assert len(pool_of(references(tmp_path / "same", coco))) == 2
    assert "1 images entry listed twice" in capsys.readouterr().err
    coco["images"].append({"id": 2, "file_name": "other.png"})
    with pytest.raises(UserError, match=r"images\[3\]: expected unique ids, got id '2' for both 'img1.png' and "
                                        r"'other.png'"):
        build_pool(references(tmp_path / "different", coco))


def test_annotations_of_unlisted_images_or_categories_are_dropped_with_a_warning(tmp_path, capsys):
    coco = small_coco([1, 2])
    coco["annotations"] += [{"image_id": 99, "category_id": 1}, {"image_id": 1, "category_id": 7}]
    assert [classes for _, classes, _ in pool_of(references(tmp_path, coco))] == [("circle",), ("square",)]
    err = capsys.readouterr().err
    assert "1 annotation(s) name images the file does not list (image_id '99'); they are dropped" in err
    assert "1 annotation(s) name categories the file does not list (category_id '7')" in err


@pytest.mark.parametrize("name", ["images\\img1.png", "..\\refs\\images\\img1.png", "images\\sub\\..\\img1.png"])
def test_windows_separators_are_read_as_slashes(tmp_path, capsys, name):
    """Case 07: 'images\\img1.png' relative to the annotations file's folder (prompts.images unset)."""
    root = tmp_path / "refs"
    spec = references(root, "backslash_file_names.json", images="images")
    coco = json.load(open(os.path.join(FIELD, "backslash_file_names.json")))
    coco["images"][0]["file_name"] = name
    (root / "instances.json").write_text(json.dumps(coco))
    data = spec.model_dump()
    del data["prompts"]["images"]
    items = build_pool(parse_spec(data))
    assert items[0].reference_uri == str(root / "images" / "img1.png")
    assert all(os.path.exists(item.reference_uri) for item in items)
    assert "use Windows '\\' separators" in capsys.readouterr().err


def test_a_file_name_differing_only_in_case_is_read_as_the_file_on_disk(tmp_path, capsys):
    """Windows ignores case, so its exports may say 'IMG0.PNG' for img0.png; two candidates stay missing."""
    coco = small_coco([1, 2, 3])
    spec = references(tmp_path, coco)
    coco["images"][0]["file_name"] = "IMG0.PNG"
    coco["images"][2]["file_name"] = "Twin.png"
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    for name in ("twin.png", "TWIN.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / name)
    items = build_pool(spec)
    assert [(i.reference_id, os.path.basename(i.reference_uri)) for i in items] == [("1", "img0.png"),
                                                                                    ("2", "img1.png")]
    err = capsys.readouterr().err
    assert "1 file_name(s) differ from the files on disk only in case (e.g." in err and "Twin.png" in err


def test_missing_images_are_skipped_and_named(tmp_path, capsys):
    """Case 08: 4 of 8 listed images absent; they are named and left out of the pool, and which
    ones were missing is recorded with the inputs (a resume plans from the same pool)."""
    present = {f"frame_{i:06d}.png" for i in (1, 3, 5, 7)}
    inputs: dict = {}
    pool = pool_of(references(tmp_path, "missing_images.json", present=present), inputs)
    assert [ref for ref, _, _ in pool] == ["1", "3", "5", "7"]
    err = capsys.readouterr().err
    assert "prompts.images: 4 of the 8 images listed are missing and are skipped" in err and "frame_000002.png" in err
    assert inputs["prompts.images"]["size"] == 4 and inputs["prompts.images"]["unit"] == "images present"
    from engine.job.references import describe_missing  # the line status, the card and the report show

    assert describe_missing(inputs["prompts.images"]) == (
        f"4 of the 8 images listed were missing and skipped (e.g. {tmp_path / 'images' / 'frame_000002.png'})")


def test_no_image_present_is_refused_naming_the_folder(tmp_path):
    spec = references(tmp_path, "missing_images.json", present=set())
    with pytest.raises(UserError, match=r"prompts.images: expected the images that prompts.annotations lists under "
                                        r"'.*images', got none of the 8 \(e.g. '.*frame_000001.png'\); set "
                                        r"prompts.images"):
        build_pool(spec)


def test_references_on_object_storage_are_listed_not_fetched(tmp_path):
    """memory:// stands for any fsspec store: one listing per folder finds the missing file."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = "memory://refs-listing"
    coco = small_coco([1, 2, 3])
    fs.pipe(f"{root}/instances.json", json.dumps(coco).encode())
    for name in ("img0.png", "img1.png"):
        fs.pipe(f"{root}/{name}", b"png")
    spec = parse_spec({**BASE_SPEC, "output": str(tmp_path / "out"), "classes": ["circle", "square"],
                       "lower_bound": 1, "prompts": {"source": "references", "annotations": f"{root}/instances.json"}})
    try:
        assert [item.reference_id for item in build_pool(spec)] == ["1", "2"]
    finally:
        fs.rm(root, recursive=True)


@pytest.mark.parametrize("classes", [["person", "traffic light", "car"], ["PERSONS", "traffic-light", "cars"]])
def test_class_names_match_categories_by_normalised_name(tmp_path, classes):
    """Case 18: categories 'Person', 'traffic_light', 'cars'; case, separators and plurals differ."""
    pool = pool_of(references(tmp_path, "category_names.json", classes=classes, job=STREET))
    assert [classes for _, classes, _ in pool] == [(c,) for c in classes + classes]


def test_a_class_matching_no_category_names_the_closest_and_synonyms(tmp_path):
    spec = references(tmp_path, "category_names.json", classes=["person", "traffic signal", "automobile"], job=STREET)
    with pytest.raises(UserError) as info:
        build_pool(spec)
    message = str(info.value)
    assert message.startswith("classes: expected each class to match a category of prompts.annotations by name")
    assert "'traffic signal' (closest: 'traffic_light')" in message and "'automobile' (closest: none)" in message
    assert "synonyms: ['traffic_light']" in message
    spec = references(tmp_path, "category_names.json",
                      classes=[{"name": "person"}, {"name": "traffic signal", "synonyms": ["traffic_light"]},
                               {"name": "automobile", "synonyms": ["cars"]}], job=STREET)
    assert len(build_pool(spec)) == 6


def test_a_class_whose_images_are_all_missing_is_warned_about(tmp_path, capsys):
    present = {f"frame_{i:06d}.png" for i in (1, 3, 5, 7)}
    coco = json.load(open(os.path.join(FIELD, "missing_images.json")))
    for ann in coco["annotations"]:  # squares (2) only on the missing, even-numbered frames
        ann["category_id"] = 2 if ann["image_id"] % 2 == 0 else 1
    assert len(build_pool(references(tmp_path, coco, present=present))) == 4
    assert "classes: no usable image of prompts.annotations shows ['square']" in capsys.readouterr().err


def test_an_image_without_job_classes_gets_a_plain_prompt(tmp_path):
    coco = small_coco([1, 2], annotations=[{"image_id": 1, "category_id": 1}, {"image_id": 1, "category_id": 2}])
    pool = pool_of(references(tmp_path, coco))
    assert pool[1] == ("2", (), "A photograph.")
