"""Tests for selfsup_lab.data: every loader offline, on tiny data made in tmp_path."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup_lab import data
from selfsup_lab.data import (
    DATASETS,
    ImageDataset,
    RandomBatches,
    default_data_dir,
    load_dataset,
    load_splits,
)
from selfsup_lab.errors import DataUnavailableError, UserError

# ---------------------------------------------------------------------------------------------- helpers

CLASSES = ("cat", "dog", "fox")


def _colour(cls: str, i: int) -> tuple[int, int, int]:
    """A colour that identifies class and image, so tests can check labels survived the round trip."""
    return (CLASSES.index(cls) * 100, i * 10 % 256, 50)


def make_folder(root: Path, per_class: int = 5, size: int = 8, splits: tuple[str, ...] = ()) -> Path:
    """root/<class>/<i>.png, or root/<split>/<class>/<i>.png for each split given."""
    for split in splits or ("",):
        for cls in CLASSES:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (size, size), _colour(cls, i)).save(folder / f"{i}.png")
    return root


def make_archive(folder: Path, archive: Path) -> Path:
    """A .tar/.tar.gz of the *contents* of folder (members like 'cat/0.png' or 'train/cat/0.png')."""
    with tarfile.open(archive, "w:gz" if archive.name.endswith("gz") else "w") as tar:
        for p in sorted(folder.rglob("*")):
            tar.add(p, arcname=p.relative_to(folder).as_posix(), recursive=False)
    return archive


def check_labels_match_pixels(ds: ImageDataset) -> None:
    for img, label, _ in (ds[i] for i in range(len(ds))):
        assert img[0, 0, 0].item() == CLASSES.index(ds.classes[label]) * 100


# ---------------------------------------------------------------------------------------------- registry

def test_registry_and_default_dir(monkeypatch, tmp_path):
    for name in ("digits", "synthetic", "imagefolder", "cifar10", "cifar100", "stl10", "mnist", "fashion-mnist"):
        assert name in DATASETS and DATASETS[name]
    monkeypatch.setenv("SELFSUP_LAB_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("SELFSUP_LAB_DATA")
    assert default_data_dir() == Path.home() / ".cache" / "selfsup-lab"


def test_display_name_shortens_image_folder_paths_only():
    assert data.display_name("imagefolder:/very/long/path/cifar10-jpg-train.tar.gz") == "cifar10-jpg-train.tar.gz"
    assert data.display_name("imagefolder:relative/folder/") == "folder"
    assert data.display_name("digits") == "digits"
    assert data.display_name("synthetic:n=64,classes=4") == "synthetic:n=64,classes=4"


def test_unknown_dataset_and_bad_split():
    with pytest.raises(UserError, match="unknown dataset 'imagenet'.*digits.*synthetic"):
        load_dataset("imagenet")
    with pytest.raises(UserError, match="unknown split"):
        load_dataset("digits", split="val")
    with pytest.raises(UserError, match="takes no options"):
        load_dataset("digits", n=3)


# ---------------------------------------------------------------------------------------------- digits

def test_digits_shapes_split_and_determinism():
    train, test = load_splits("digits")
    assert train.images.shape == (1437, 3, 32, 32) and test.images.shape == (360, 3, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.num_classes == 10 and train.image_size == 32 and train.classes[3] == "3"
    assert (train.split, test.split, train.name) == ("train", "test", "digits")
    assert torch.equal(train.images[:, 0], train.images[:, 2])  # grayscale replicated
    assert train.images.max() > 200  # scaled from 0..16 to 0..255
    assert torch.bincount(test.labels).min() >= 35  # stratified: every digit ~36 times
    again = load_dataset("digits", "test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    mean, std = train.channel_stats()
    assert len(mean) == 3 and 0.1 < mean[0] < 0.6 and 0.1 < std[0] < 0.6
    assert train.channel_stats() is train.channel_stats()  # cached


def test_getitem_returns_index_and_to_device():
    ds = load_dataset("digits", "test")
    img, label, index = ds[7]
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8
    assert label == int(ds.labels[7]) and isinstance(label, int) and index == 7
    assert ds[-1][2] == len(ds) - 1
    with pytest.raises(IndexError):
        ds[len(ds)]
    moved = ds.to("cpu")
    assert len(moved) == len(ds) and moved.classes == ds.classes and moved.split == "test"
    assert "360 images" in repr(ds)


def test_channel_stats_exact():
    images = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    images[0, 0] = 255  # red channel: half the pixels 1.0, half 0.0
    ds = ImageDataset(images, torch.zeros(2, dtype=torch.int64), ["a"], "toy", "train")
    mean, std = ds.channel_stats()
    # green and blue are constant: centred only (a deviation of 0 would divide by 0 when normalising)
    assert mean == pytest.approx((0.5, 0.0, 0.0)) and std == pytest.approx((0.5, 1.0, 1.0))


def test_imagedataset_rejects_wrong_dtype():
    with pytest.raises(UserError, match="uint8"):
        ImageDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64), ["a"], "toy", "train")


# ---------------------------------------------------------------------------------------------- synthetic

def test_synthetic_determinism_and_options():
    a = load_dataset("synthetic:n=64,classes=4,size=8,seed=1")
    b = load_dataset("synthetic", n=64, classes=4, size=8, seed=1)
    assert a.images.shape == (64, 3, 8, 8) and torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.bincount(a.labels).tolist() == [16, 16, 16, 16]
    c = load_dataset("synthetic:n=64,classes=4,size=8,seed=2")
    assert not torch.equal(a.images, c.images)
    train, test = load_splits("synthetic:size=12", n=40, classes=2)  # spec string and keywords combine
    assert len(train) == 40 and len(test) == 10 and train.image_size == 12 and train.num_classes == 2
    default = load_dataset("synthetic")
    assert default.images.shape == (512, 3, 16, 16) and default.num_classes == 4
    with pytest.raises(UserError, match="unknown synthetic option 'colour'"):
        load_dataset("synthetic:colour=3")
    with pytest.raises(UserError, match="whole number"):
        load_dataset("synthetic:n=many")
    with pytest.raises(UserError, match="would be 15,360 GB of images"):  # refused before allocating
        load_dataset("synthetic:size=100000")
    for bad in ("classes=1", "n=7,classes=2", "size=3"):  # one class would score 1.0 whatever is learnt
        with pytest.raises(UserError, match=r"synthetic needs classes >= 2, n >= 4 \* classes and size >= 4"):
            load_dataset(f"synthetic:{bad}")


def test_synthetic_classes_are_learnable_but_not_by_pixels():
    train, test = load_splits("synthetic")

    def features(ds):  # shift-invariant: magnitude of the 2-D Fourier transform
        return torch.fft.fft2(ds.images.float() / 255).abs().flatten(1)

    def nearest_neighbour_accuracy(f_train, f_test):
        nearest = torch.cdist(f_test, f_train).argmin(dim=1)
        return (train.labels[nearest] == test.labels).float().mean().item()

    assert nearest_neighbour_accuracy(features(train), features(test)) > 0.95
    pixels = nearest_neighbour_accuracy(train.images.flatten(1).float(), test.images.flatten(1).float())
    assert pixels < 0.95


# ---------------------------------------------------------------------------------------------- imagefolder

def test_imagefolder_plain_folder_holds_out_20_percent(tmp_path):
    src = make_folder(tmp_path / "pets", per_class=10)
    train, test = load_splits(f"imagefolder:{src}", data_dir=tmp_path / "cache")
    assert train.classes == list(CLASSES) and train.images.shape == (24, 3, 8, 8) and len(test) == 6
    assert torch.bincount(test.labels).tolist() == [2, 2, 2]  # stratified
    assert train.name == f"imagefolder:{src.resolve()}"
    check_labels_match_pixels(train)
    check_labels_match_pixels(test)
    again = load_dataset(f"imagefolder:{src}", "test", data_dir=tmp_path / "cache")
    assert torch.equal(again.images, test.images)  # deterministic holdout


def test_a_run_on_a_relative_imagefolder_path_reopens_from_any_directory(tmp_path, monkeypatch):
    import selfsup_lab

    make_folder(tmp_path / "pets", per_class=10)
    monkeypatch.chdir(tmp_path)
    options = dict(epochs=1, batch_size=8, backbone="convnet", device="cpu", progress=False, figures=False,
                   data_dir="cache", proj_hidden=32, proj_dim=16)
    selfsup_lab.train("simclr", "imagefolder:pets", out="run", **options)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    recorded = config["dataset"]
    assert recorded == f"imagefolder:{tmp_path / 'pets'}"  # absolute: the run does not depend on the directory
    assert config["data_dir"] == str(tmp_path / "cache")  # and neither does its data cache
    elsewhere = tmp_path / "notebooks"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert selfsup_lab.load_run(tmp_path / "run", device="cpu").evaluate()["knn_top1"] >= 0
    resumed = selfsup_lab.train(resume=True, out=str(tmp_path / "run"), epochs=2, progress=False)
    assert resumed.trainer.epoch == 2 and not (elsewhere / "cache").exists()  # the run's cache, not a new one
    elsewhere_spec = "ImageFolder:../pets"  # another spelling and another path to the same folder
    assert data.canonical_spec(elsewhere_spec) == recorded
    monkeypatch.chdir(tmp_path)  # the same relative spec as at the start is the same data set, not a change
    assert selfsup_lab.train("simclr", "imagefolder:pets", resume=True, out="run", **{**options, "epochs": 3}).trainer.epoch == 3


def test_imagefolder_folder_with_train_and_test(tmp_path):
    src = make_folder(tmp_path / "pets", per_class=4, splits=("train", "test"))
    train, test = load_splits(f"imagefolder:{src}", data_dir=tmp_path / "cache")
    assert len(train) == 12 and len(test) == 12 and test.classes == list(CLASSES)
    check_labels_match_pixels(test)


def test_imagefolder_warns_when_test_classes_are_missing_from_training(tmp_path):
    src = make_folder(tmp_path / "pets", per_class=2, splits=("train", "test"))
    (src / "test" / "owl").mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(src / "test" / "owl" / "0.png")
    with pytest.warns(UserWarning, match=r"classes the training images lack \(owl\).*can never predict them"):
        train, test = load_splits(f"imagefolder:{src}", data_dir=tmp_path / "cache")
    assert test.classes == train.classes == sorted([*CLASSES, "owl"])


def add_unlabelled(folder: Path, count: int, name: str = "unlabelled", size: int = 8) -> None:
    (folder / name).mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (size, size), (255, i, 255)).save(folder / name / f"u{i}.png")


def test_imagefolder_unlabelled_folder_is_trained_on_but_is_not_a_class(tmp_path):
    src = make_folder(tmp_path / "pets", per_class=4, splits=("train", "test"))
    add_unlabelled(src / "train", 7, name="Unlabeled")  # either spelling, any case
    train, test = load_splits(f"imagefolder:{src}", data_dir=tmp_path / "cache")
    assert train.classes == list(CLASSES) and len(train) == 19 and train.num_unlabelled == 7
    assert (train.images[train.labels == -1][:, 0] == 255).all()  # the unlabelled images, and only they
    check_labels_match_pixels(train.labelled())
    # without train/ and test/, the held-out test images come from the classes only
    flat = make_folder(tmp_path / "flat", per_class=5)
    add_unlabelled(flat, 6)
    train, test = load_splits(f"imagefolder:{flat}", data_dir=tmp_path / "cache")
    assert train.num_unlabelled == 6 and test.num_unlabelled == 0 and len(test) == 3
    # test images must have a class
    add_unlabelled(src / "test", 2)
    with pytest.raises(UserError, match="test images need a class"):
        load_splits(f"imagefolder:{src}", data_dir=tmp_path / "cache")


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz"])
def test_imagefolder_archive(tmp_path, suffix):
    src = make_folder(tmp_path / "pets", per_class=5)
    archive = make_archive(src, tmp_path / f"pets{suffix}")
    train, test = load_splits(f"imagefolder:{archive}", data_dir=tmp_path / "cache")
    assert len(train) == 12 and len(test) == 3
    check_labels_match_pixels(train)


def test_imagefolder_archive_with_splits_and_wrapper_folder(tmp_path):
    make_folder(tmp_path / "outer" / "pets", per_class=3, splits=("train", "test"))
    archive = make_archive(tmp_path / "outer", tmp_path / "pets.tar.gz")  # members 'pets/train/cat/0.png'
    train, test = load_splits(f"imagefolder:{archive}", data_dir=tmp_path / "cache")
    assert len(train) == 9 and len(test) == 9


def test_imagefolder_sibling_archives_and_folder_of_archives(tmp_path):
    make_folder(tmp_path / "tr", per_class=4, splits=("train",))
    make_folder(tmp_path / "te", per_class=2, splits=("test",))
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    train_tgz = make_archive(tmp_path / "tr", shelf / "pets-jpg-train.tar.gz")
    make_archive(tmp_path / "te", shelf / "pets-jpg-test.tar.gz")
    train, test = load_splits(f"imagefolder:{train_tgz}", data_dir=tmp_path / "cache")
    assert len(train) == 12 and len(test) == 6  # test came from the sibling, nothing held out
    check_labels_match_pixels(test)
    train2, test2 = load_splits(f"imagefolder:{shelf}", data_dir=tmp_path / "cache")
    assert torch.equal(train2.images, train.images) and torch.equal(test2.labels, test.labels)


def test_imagefolder_cache_is_reused(tmp_path, monkeypatch):
    src = make_archive(make_folder(tmp_path / "pets"), tmp_path / "pets.tar.gz")
    first = load_dataset(f"imagefolder:{src}", data_dir=tmp_path / "d")
    assert len(list((tmp_path / "d" / "cache").glob("*.pt"))) == 1

    def no_decoding(_data):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data, "_decode_image", no_decoding)
    second = load_dataset(f"imagefolder:{src}", data_dir=tmp_path / "d")
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)


def test_imagefolder_corrupt_cache_is_rebuilt(tmp_path):
    src = make_folder(tmp_path / "pets")
    first = load_dataset(f"imagefolder:{src}", data_dir=tmp_path / "d")
    (cache,) = (tmp_path / "d" / "cache").glob("*.pt")
    cache.write_bytes(cache.read_bytes()[:100])  # as if the disk filled up mid-write
    second = load_dataset(f"imagefolder:{src}", data_dir=tmp_path / "d")
    assert torch.equal(first.images, second.images)
    assert data._read_cache(cache, ("parts", dict)) is not None  # rewritten whole
    assert not list(cache.parent.glob("*.tmp*"))  # no temporary files left behind


def test_imagefolder_folder_change_invalidates_cache(tmp_path):
    src = make_folder(tmp_path / "pets", per_class=5)
    assert len(load_dataset(f"imagefolder:{src}", data_dir=tmp_path / "d")) == 12
    Image.new("RGB", (8, 8), (0, 0, 0)).save(src / "cat" / "extra.png")
    train, test = load_splits(f"imagefolder:{src}", data_dir=tmp_path / "d")
    assert len(train) + len(test) == 16
    # The superseded cache is removed (~180 MB each for CIFAR); another folder's cache of the same name stays.
    other = make_folder(tmp_path / "elsewhere" / "pets", per_class=2)
    load_dataset(f"imagefolder:{other}", data_dir=tmp_path / "d")
    caches = [torch.load(p, weights_only=True)["source"] for p in (tmp_path / "d" / "cache").glob("*.pt")]
    assert sorted(caches) == sorted([str(src.resolve()), str(other.resolve())])


def test_imagefolder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist; pass a folder of class sub-folders"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}", data_dir=tmp_path)
    with pytest.raises(UserError, match="needs a path"):
        load_dataset("imagefolder", data_dir=tmp_path)
    src = make_folder(tmp_path / "mixed", per_class=3)
    Image.new("RGB", (12, 10)).save(src / "dog" / "big.png")
    with pytest.raises(UserError, match=r"different sizes \(8x8 \(9 images\), 12x10 \(1 image\); e.g. dog/big.png is 12x10\); resize"):
        load_dataset(f"imagefolder:{src}", data_dir=tmp_path)
    splits = make_folder(tmp_path / "two-sizes", per_class=2, splits=("train",))
    make_folder(splits, per_class=2, size=12, splits=("test",))
    with pytest.raises(UserError, match=r"the splits in .* have images of different sizes \(test 12x12, train 8x8\)"):
        load_dataset(f"imagefolder:{splits}", data_dir=tmp_path)
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (8, 8)).save(loose / "a.png")
    with pytest.raises(UserError, match="not inside a class sub-folder"):
        load_dataset(f"imagefolder:{loose}", data_dir=tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="not a .tar"):
        load_dataset(f"imagefolder:{tmp_path / 'notes.txt'}", data_dir=tmp_path)
    broken = make_folder(tmp_path / "broken", per_class=2)
    (broken / "cat" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"could not decode 1 image file\(s\) in .*: cat/bad.png \(not an image format "
                                        r"PIL can read\); remove or re-save that file"):
        load_dataset(f"imagefolder:{broken}", data_dir=tmp_path)
    (broken / "dog" / "empty.jpg").write_bytes(b"")  # every bad file in one message, not one per run
    with pytest.raises(UserError, match=r"could not decode 2 image file\(s\) in .*: cat/bad.png \(not an image "
                                        r"format PIL can read\); dog/empty.jpg \(empty file\); remove or re-save those"):
        load_dataset(f"imagefolder:{broken}", data_dir=tmp_path)


def test_a_truncated_archive_is_refused_even_when_cut_between_two_files(tmp_path):
    import gzip

    archive = make_archive(make_folder(tmp_path / "src", per_class=4), tmp_path / "photos.tar")
    whole = archive.read_bytes()
    with tarfile.open(archive) as tar:  # a cut right after a member's data: tar's stream sees a clean end there
        last = tar.getmembers()[-1]
        cut = last.offset_data + ((last.size + 511) // 512) * 512
    (tmp_path / "cut").mkdir()
    for name, content in (("cut.tar", whole[:cut]), ("cut.tar.gz", gzip.compress(whole)[:-200])):
        (tmp_path / "cut" / name).write_bytes(content)
        with pytest.raises(UserError, match=f"the archive .*{name} ends early .*download or copy it again"):
            load_dataset(f"imagefolder:{tmp_path / 'cut' / name}", data_dir=tmp_path)
    assert len(load_dataset(f"imagefolder:{archive}", "train", data_dir=tmp_path)) > 0  # the whole one reads


def test_imagefolder_follows_linked_class_folders_and_says_what_it_leaves_out(tmp_path):
    originals = make_folder(tmp_path / "all", per_class=5)
    subset = tmp_path / "subset"
    subset.mkdir()
    for cls in CLASSES[:2]:  # a subset made of links to class folders
        (subset / cls).symlink_to(originals / cls, target_is_directory=True)
    (subset / "loop").symlink_to(subset, target_is_directory=True)  # a link to its own parent must not loop
    (subset / CLASSES[0] / "notes.txt").write_text("labels checked")  # (in the original folder)
    Image.new("RGB", (8, 8)).save(originals / CLASSES[1] / "photo.heic.png")
    (originals / CLASSES[1] / "photo.heic").write_bytes(b"HEIC")
    with pytest.warns(UserWarning, match=r"left out 2 file\(s\) in .*subset that are not images") as caught:
        train, test = load_splits(f"imagefolder:{subset}", data_dir=tmp_path)
    assert ".heic ×1" in str(caught[0].message) and ".txt ×1" in str(caught[0].message)
    assert train.classes == list(CLASSES[:2]) and len(train) + len(test) == 11  # 5 + 6 images (loop/ adds nothing)


def test_an_empty_class_folder_is_named_in_a_warning_in_a_folder_and_an_archive(tmp_path):
    root = make_folder(tmp_path / "animals", per_class=3)
    (root / "owl").mkdir()  # copied without its images
    (root / ".ipynb_checkpoints").mkdir()  # hidden: not a class anyway
    with pytest.warns(UserWarning, match=r"1 folder\(s\) in .*animals hold no images and are left out: owl/$"):
        train, _ = load_splits(f"imagefolder:{root}", data_dir=tmp_path / "dd")
    assert train.classes == list(CLASSES)
    archive = tmp_path / "animals.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="animals")
    with pytest.warns(UserWarning, match=r"in .*animals.tar hold no images and are left out: animals/owl/$"):
        load_splits(f"imagefolder:{archive}", data_dir=tmp_path / "dd")


def test_imagefolder_splits_any_case_val_as_test_and_names_unused_folders(tmp_path):
    root = tmp_path / "cased"
    make_folder(root / "Train", per_class=3)
    make_folder(root / "Test", per_class=2)
    train, test = load_splits(f"imagefolder:{root}", data_dir=tmp_path)
    assert (len(train), len(test)) == (3 * len(CLASSES), 2 * len(CLASSES)) and train.classes == list(CLASSES)
    imagenet = tmp_path / "imagenet"
    make_folder(imagenet / "train", per_class=3)
    make_folder(imagenet / "val", per_class=2)
    make_folder(imagenet / "extra", per_class=1)
    with pytest.warns(UserWarning) as caught:
        train, test = load_splits(f"imagefolder:{imagenet}", data_dir=tmp_path)
    messages = " ".join(str(w.message) for w in caught)
    assert (len(train), len(test)) == (3 * len(CLASSES), 2 * len(CLASSES))
    assert "its val/ folder is used as the test split" in messages
    assert f"not used: extra/ ({len(CLASSES)} images)" in messages


def test_a_class_folder_named_like_a_split_gets_a_message_saying_so(tmp_path):
    root = make_folder(tmp_path / "vehicles", per_class=2)
    for i in range(2):
        Image.new("RGB", (8, 8)).save((root / "train").mkdir() or root / "train" / f"{i}.png") if i == 0 else \
            Image.new("RGB", (8, 8)).save(root / "train" / f"{i}.png")
    with pytest.raises(UserError, match=r"a folder named train/ is read as a split holding class folders: if train "
                                        r"is a class, rename its folder, e.g. to train_"):
        load_splits(f"imagefolder:{root}", data_dir=tmp_path)


def test_images_are_decoded_upright_and_16_bit_grey_is_scaled(tmp_path):
    sideways = Image.new("RGB", (12, 8), (200, 10, 10))
    exif = sideways.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to view
    buffer = __import__("io").BytesIO()
    sideways.save(buffer, "JPEG", exif=exif.tobytes())
    assert data._decode_image(buffer.getvalue()).shape == (12, 8, 3)  # as a viewer shows it: 8 wide, 12 high
    deep = Image.fromarray(np.array([[0, 20000, 40000, 65535]], dtype=np.uint16))
    buffer = __import__("io").BytesIO()
    deep.save(buffer, "PNG")
    assert data._decode_image(buffer.getvalue())[0, :, 0].tolist() == [0, 78, 156, 255]


def test_one_class_warns_that_the_scores_mean_nothing(tmp_path):
    root = tmp_path / "one"
    make_folder(root, per_class=5)
    for cls in CLASSES[1:]:
        for f in (root / cls).iterdir():
            f.unlink()
        (root / cls).rmdir()
    with pytest.warns(UserWarning, match=f"has one class \\({CLASSES[0]}\\).* read 1.0 whatever is learnt"):
        load_splits(f"imagefolder:{root}", data_dir=tmp_path)


def test_a_zip_gets_told_to_unzip(tmp_path):
    (tmp_path / "photos.zip").write_bytes(b"PK\x03\x04")
    with pytest.raises(UserError, match=r"\(a .zip: unzip it and pass the folder"):
        load_dataset(f"imagefolder:{tmp_path / 'photos.zip'}", data_dir=tmp_path)
    with pytest.raises(UserError, match=r"holds photos.zip, and .zip files are not read; unzip it there"):
        load_dataset(f"imagefolder:{tmp_path}", data_dir=tmp_path)


def test_ctrl_c_while_the_cache_is_written_leaves_no_temporary_file(tmp_path, monkeypatch):
    def interrupted_save(obj, path):
        Path(path).write_bytes(b"half a cache")
        raise KeyboardInterrupt

    monkeypatch.setattr(data.torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        data._write_cache(tmp_path / "cache" / "x.pt", {"images": torch.zeros(1)})
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_data_dir_that_cannot_hold_the_cache_only_warns(tmp_path):
    src = make_folder(tmp_path / "src", per_class=3)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not write the dataset cache .* decoded again next time"):
        dataset = load_dataset(f"imagefolder:{src}", data_dir=not_a_folder)
    assert len(dataset) > 0


# ---------------------------------------------------------------------------------------------- torchvision

def test_torchvision_offline_gives_data_unavailable(tmp_path, monkeypatch):
    import urllib.error

    import torchvision

    class Offline:
        def __init__(self, *args, **kwargs):
            raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DataUnavailableError, match="digits") as err:
        load_dataset("cifar10", data_dir=tmp_path)
    assert "imagefolder" in str(err.value) and "\n" not in str(err.value)


def test_torchvision_converted_once_and_cached(tmp_path, monkeypatch):
    import torchvision

    calls = []

    class FakeMNIST:  # what torchvision's MNIST exposes: (N, 28, 28) uint8 tensor, targets, classes
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            self.data = torch.full((6, 28, 28), 7, dtype=torch.uint8)
            self.targets = torch.tensor([0, 1, 2, 0, 1, 2])
            self.classes = ["0 - zero", "1 - one", "2 - two"]

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    ds = load_dataset("mnist", "test", data_dir=tmp_path)
    assert ds.images.shape == (6, 3, 28, 28) and ds.labels.dtype == torch.int64 and ds.num_classes == 3
    assert calls == [(str(tmp_path / "mnist"), False, True)]
    again = load_dataset("mnist", "test", data_dir=tmp_path)
    assert len(calls) == 1 and torch.equal(again.images, ds.images)


def test_torchvision_cifar_layout_is_permuted(tmp_path, monkeypatch):
    import torchvision

    class FakeCIFAR:
        def __init__(self, root, train, download):
            self.data = np.zeros((2, 32, 32, 3), dtype=np.uint8)
            self.data[..., 0] = 255  # red
            self.targets = [1, 0]
            self.classes = ["a", "b"]

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", FakeCIFAR)
    ds = load_dataset("cifar100", data_dir=tmp_path)
    assert ds.images.shape == (2, 3, 32, 32) and ds.images[:, 0].min() == 255 and ds.images[:, 1].max() == 0


class FakeSTL10:
    """What torchvision's STL10 exposes: (N, 3, H, W) uint8 numpy data, labels with -1 for unlabelled images."""

    calls: list = []

    def __init__(self, root, split, download):
        FakeSTL10.calls.append(split)
        labelled, unlabelled, test = 6, 10, 4
        n = {"train": labelled, "train+unlabeled": labelled + unlabelled, "test": test}[split]
        self.data = np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(3, 1).repeat(8, 2).repeat(8, 3)
        self.labels = np.asarray([i % 3 for i in range(min(n, labelled if split != "test" else n))]
                                 + [-1] * (n - labelled if split == "train+unlabeled" else 0))
        self.classes = ["airplane", "bird", "car"]


def test_stl10_trains_on_its_unlabelled_images_and_evaluates_on_the_labelled(tmp_path, monkeypatch):
    import torchvision

    FakeSTL10.calls = []
    monkeypatch.setattr(torchvision.datasets, "STL10", FakeSTL10)
    train, test = load_splits("stl10", data_dir=tmp_path)
    assert FakeSTL10.calls == ["train+unlabeled", "test"] and train.split == "train"
    assert len(train) == 16 and train.num_unlabelled == 10 and test.num_unlabelled == 0
    assert "(10 unlabelled)" in repr(train)
    labelled = train.labelled()
    assert len(labelled) == 6 and labelled.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert labelled.images[:, 0, 0, 0].tolist() == list(range(6))  # the labelled images, in order
    assert test.labelled() is test  # nothing to drop: no copy
    # stl10:labelled is the 5,000 labelled training images alone, cached apart from the full training split
    only = load_dataset("stl10:labelled", data_dir=tmp_path)
    assert FakeSTL10.calls[-1] == "train" and len(only) == 6 and only.num_unlabelled == 0
    assert {p.name for p in tmp_path.glob("*.pt")} == {"stl10-train+unlabeled.pt", "stl10-train.pt", "stl10-test.pt"}
    with pytest.raises(UserError, match="labelled"):
        load_dataset("stl10:unlabelled", data_dir=tmp_path)


def test_imagedataset_labels_must_name_a_class_or_be_unlabelled():
    images = torch.zeros(3, 3, 4, 4, dtype=torch.uint8)
    ImageDataset(images, torch.tensor([0, -1, 1]), ["a", "b"], "toy", "train")  # -1 = unlabelled is fine
    for bad in ([0, 2, 1], [0, -2, 1]):
        with pytest.raises(UserError, match=r"0\.\.1"):
            ImageDataset(images, torch.tensor(bad), ["a", "b"], "toy", "train")


# ---------------------------------------------------------------------------------------------- batches

def test_random_batches_deterministic_and_disjoint():
    sampler = RandomBatches(103, 10)
    assert len(sampler) == 10
    b0 = sampler.batches(0, torch.Generator().manual_seed(5))
    assert len(b0) == 10 and all(b.shape == (10,) and b.dtype == torch.int64 for b in b0)
    seen = torch.cat(b0)
    assert len(seen.unique()) == len(seen) == 100 and seen.min() >= 0 and seen.max() < 103
    # same seed and epoch -> same batches, whatever state the generator is in; other epoch or seed -> new
    used = torch.Generator().manual_seed(5)
    torch.rand(10, generator=used)
    assert all(torch.equal(x, y) for x, y in zip(b0, sampler.batches(0, used)))
    assert not torch.equal(torch.cat(b0), torch.cat(sampler.batches(1, torch.Generator().manual_seed(5))))
    assert not torch.equal(torch.cat(b0), torch.cat(sampler.batches(0, torch.Generator().manual_seed(6))))


def test_random_batches_keep_last():
    sampler = RandomBatches(103, 10, drop_last=False)
    batches = sampler.batches(3, torch.Generator().manual_seed(0))
    assert len(sampler) == len(batches) == 11 and len(batches[-1]) == 3
    assert sorted(torch.cat(batches).tolist()) == list(range(103))


def test_random_batches_too_large():
    expected = "batch size 512 is larger than the 360-image training set; use --batch-size 360 or less"
    with pytest.raises(UserError, match=expected):
        RandomBatches(360, 512)
    assert len(RandomBatches(360, 360)) == 1


def test_a_dataset_without_labelled_test_images_is_refused_before_training(tmp_path):
    """Found when the run starts, not after it: two images per class leave a 20% hold-out of none, and a
    folder of unlabelled images only has no classes at all."""
    import selfsup_lab

    few = make_folder(tmp_path / "few", per_class=2)
    only_unlabelled = tmp_path / "unl"
    add_unlabelled(only_unlabelled, 6)
    for folder in (few, only_unlabelled):
        with pytest.raises(UserError, match="has no labelled test images to evaluate on"):
            selfsup_lab.train("simclr", f"imagefolder:{folder}", epochs=1, batch_size=2, device="cpu",
                              data_dir=str(tmp_path / "cache"), out=str(tmp_path / "run"), progress=False)


def test_a_cache_whose_images_are_not_uint8_is_rebuilt(tmp_path):
    for cls, colour in (("cat", (200, 30, 30)), ("dog", (30, 200, 30))):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (8, 8), tuple(min(255, c + 10 * i) for c in colour)).save(tmp_path / "pets" / cls / f"{i}.png")
    spec = f"imagefolder:{tmp_path / 'pets'}"
    first = load_dataset(spec, data_dir=tmp_path / "d")
    (cache,) = (tmp_path / "d" / "cache").glob("*.pt")
    saved = torch.load(cache, weights_only=True)
    saved["images"] = saved["images"].float() / 255  # e.g. a cache written by a float-converting tool
    torch.save(saved, cache)
    second = load_dataset(spec, data_dir=tmp_path / "d")
    assert second.images.dtype == torch.uint8 and torch.equal(first.images, second.images)
