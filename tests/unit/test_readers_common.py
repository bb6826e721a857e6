"""What every dense-label reader shares: the registry, the sample contract through the existing
transforms and collate, label spaces, full-bit-depth PNG decoding, and `mtwork data check` exit codes."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dense_layouts as dl
from mtwork.cli import main
from mtwork.data.batch import batch_to_device, collate
from mtwork.data.dense import ReaderError, read_png
from mtwork.data.label_spaces import LABEL_SPACES, get_label_space, markdown_table
from mtwork.data.registry import create_dataset, dataset_names, get_reader
from mtwork.data.transforms import EvalTransform, TrainTransform

DENSE = ("cityscapes", "vkitti2", "synthia", "taskonomy", "nyuv2")
SPLIT = {"cityscapes": "train", "vkitti2": "all", "synthia": "all", "taskonomy": "train", "nyuv2": "train"}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("dense")
    return {name: dl.WRITERS[name](base / name) for name in DENSE}


def test_registry_has_every_format():
    assert set(dataset_names()) == {"bdd100k", *DENSE}
    with pytest.raises(KeyError, match="unknown dataset 'kitti'.*cityscapes"):
        create_dataset("kitti", ".", "train")


@pytest.mark.parametrize("name", DENSE)
def test_raw_sample_contract(roots, name):
    ds = create_dataset(name, roots[name], SPLIT[name])
    assert len(ds) >= 1 and ds.labeled_counts()[ds.tasks[0]] == len(ds)
    sample = ds[0]
    h, w = sample["orig_size"]
    assert sample["image"].shape == (h, w, 3) and sample["image"].dtype == np.uint8
    assert sample["name"] == ds.names[0] and ds.image_size(0) == (h, w)
    assert set(ds.tasks_of(0)) == set(ds.tasks) & {"semseg", "depth", "normals", "edges"}
    assert sample["semseg"].shape == (h, w) and sample["semseg"].dtype == np.uint8
    assert ((sample["semseg"] < len(ds.class_names)) | (sample["semseg"] == 255)).all()
    assert sample["depth"].shape == (h, w) and sample["depth"].dtype == np.float32 and (sample["depth"] >= 0).all()
    assert sample["edges"].shape == (h, w) and sample["edges"].dtype == np.float32
    if "normals" in sample:
        n = sample["normals"]
        assert n.shape == (h, w, 3) and n.dtype == np.float32
        length = np.linalg.norm(n, axis=-1)
        assert np.all((np.abs(length - 1) < 1e-5) | (length == 0))


@pytest.mark.parametrize("name", DENSE)
def test_transforms_and_collate_work_unchanged(roots, name):
    train = create_dataset(name, roots[name], SPLIT[name], transform=TrainTransform((8, 8)))
    batch = collate([train[i] for i in range(len(train))])
    assert batch["image"].shape == (len(train), 3, 8, 8)
    assert batch["labeled"]["semseg"].all() and batch["labeled"]["depth"].all() and batch["labeled"]["edges"].all()
    assert batch["semseg"].dtype == torch.uint8 and batch["depth"].shape[1:] == (8, 8)  # the loader's contract
    on_device = batch_to_device(batch, torch.device("cpu"))  # what losses and metrics read
    assert on_device["semseg"].dtype == torch.long and on_device["image"].dtype == torch.float32
    evaluation = create_dataset(name, roots[name], SPLIT[name], tasks=("depth",), transform=EvalTransform((8, 8)))
    sample = evaluation[0]
    assert set(sample) >= {"image", "depth", "name", "orig_size"} and "semseg" not in sample


def test_only_requested_tasks_are_read(roots):
    ds = create_dataset("cityscapes", roots["cityscapes"], "train", tasks=("semseg",))
    assert set(ds[0]) == {"image", "name", "orig_size", "semseg"}
    with pytest.raises(ValueError, match="tasks.*drivable"):
        create_dataset("cityscapes", roots["cityscapes"], "train", tasks=("drivable",))
    with pytest.raises(ValueError, match="label space 'indoor10' does not map.*synthetic8"):
        create_dataset("cityscapes", roots["cityscapes"], "train", label_space="indoor10")


def test_label_spaces_are_consistent():
    names = set(LABEL_SPACES.names())
    assert names == {"cityscapes19", "synthia16", "synthetic8", "taskonomy17", "nyuv2_40", "indoor10"}
    c19 = get_label_space("cityscapes19").classes
    for sub in ("synthia16", "synthetic8"):  # driving spaces keep Cityscapes' class order
        classes = get_label_space(sub).classes
        assert [c19.index(c) for c in classes] == sorted(c19.index(c) for c in classes)
    assert len(get_label_space("synthia16").classes) == 16 and len(get_label_space("synthetic8").classes) == 8
    # every native name a space maps is a class the reader's table knows (lookup_table raises otherwise)
    natives = {"cityscapes": "mtwork.data.cityscapes", "synthia": "mtwork.data.synthia",
               "taskonomy": "mtwork.data.taskonomy", "nyuv2": "mtwork.data.nyuv2"}
    import importlib

    for name in names:
        space = get_label_space(name)
        for dataset in space.datasets:
            if dataset == "vkitti2":
                from mtwork.data.vkitti2 import CATEGORIES

                assert set(space.mapping[dataset]) <= set(CATEGORIES)
            else:
                space.lookup_table(dataset, importlib.import_module(natives[dataset]).NATIVE_CLASSES)


def test_docs_table_is_the_label_space_table():
    assert markdown_table() in (REPO / "docs" / "datasets.md").read_text()


# --------------------------------------------------------------------------- 16-bit PNG decoding


def test_read_png_keeps_16_bit_colour_exact(tmp_path):
    rng = np.random.default_rng(0)
    for channels in (3, 4):
        array = rng.integers(0, 65536, size=(7, 9, channels), dtype=np.uint16)
        array[0, 0, 0] = 3  # a class id < 256: Pillow alone would give 0
        path = dl.png_rgb16(tmp_path / f"c{channels}.png", array)
        decoded = read_png(path, "test")
        assert decoded.dtype == np.uint16 and np.array_equal(decoded, array)
        with Image.open(path) as img:  # why read_png exists: Pillow keeps only the high byte
            assert np.asarray(img)[0, 0, 0] == 0
    gray = rng.integers(0, 65536, size=(5, 4), dtype=np.uint16)
    Image.fromarray(gray).save(tmp_path / "g.png")
    assert np.array_equal(read_png(tmp_path / "g.png", "test"), gray)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ReaderError, match="bad.png: unreadable or corrupt test") as info:
        read_png(tmp_path / "bad.png", "test")
    assert info.value.kind == "corrupt_mask"


# --------------------------------------------------------------------------- mtwork data check


@pytest.mark.parametrize("name", DENSE)
def test_data_check_cli_exit_codes(roots, name, tmp_path, capsys):
    assert main(["data", "check", "--format", name, str(roots[name]), "--json", str(tmp_path / "r.json")]) == 0
    assert f"{name} check of {roots[name]}: OK" in capsys.readouterr().out
    broken = tmp_path / "broken"
    shutil.copytree(roots[name], broken)
    image = sorted(p for p in broken.rglob("*") if p.suffix in (".png", ".jpg") and
                   any(part in ("leftImg8bit", "rgb", "RGB", "images") for part in p.relative_to(broken).parts))[0]
    image.write_bytes(image.read_bytes()[:60])  # truncated
    assert main(["data", "check", "--format", name, str(broken)]) == 1
    out = capsys.readouterr().out
    assert f"[corrupt_image] {image}" in out


def test_data_check_unknown_format_and_bdd100k_still_works(synthdrive_tiny, capsys):
    assert main(["data", "check", "--format", "kitti", "."]) == 2
    assert "unknown data check format 'kitti'" in capsys.readouterr().err
    assert main(["data", "check", "--format", "bdd100k", str(synthdrive_tiny)]) == 0
    assert main(["data", "check", str(synthdrive_tiny)]) == 0  # bdd100k stays the default


def test_dense_readers_are_dense_datasets():
    from mtwork.data.dense import DenseDataset

    for name in DENSE:
        reader = get_reader(name)
        assert issubclass(reader, DenseDataset) and reader.name == name
        assert set(reader.CHECK_SPLITS) <= set(reader.SPLITS)
