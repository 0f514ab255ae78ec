"""Dataset loaders: digits, CIFAR archives/folders in the official layout, npz, errors."""

import pickle
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from tempscale_tf import data


def _cifar_batch(n, rng, fine=False):
    key = b"fine_labels" if fine else b"labels"
    return {
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        key: rng.integers(0, 10, size=n).tolist(),
        b"filenames": [b"x"] * n,
        b"batch_label": b"b",
    }


def _write_fake_cifar10(folder, rng, n=20):
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = _cifar_batch(n, rng)
        with open(folder / name, "wb") as f:
            pickle.dump(batches[name], f, protocol=4)
    return batches


def test_digits_split_shapes_and_range():
    x_train, y_train = data.load_arrays("digits", "train")
    x_test, y_test = data.load_arrays("digits", "test")
    assert x_train.shape == (1437, 32, 32, 3) and x_test.shape == (360, 32, 32, 3)
    assert x_train.dtype == np.float32 and x_train.min() >= 0 and x_train.max() <= 1
    assert set(np.unique(y_test)) == set(range(10))
    # the split is fixed: no test image equals a train image's index order by chance
    again, _ = data.load_arrays("digits", "test")
    np.testing.assert_array_equal(x_test, again)


def test_pipeline_batches_are_deterministic_and_resumable():
    full = list(data.load("digits", "train", batch_size=100, seed=3, epoch=2))
    resumed = list(data.load("digits", "train", batch_size=100, seed=3, epoch=2, skip_batches=4))
    assert len(full) == 14 and len(resumed) == 10  # drop_remainder on train
    for (xa, ya), (xb, yb) in zip(full[4:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    other_epoch = next(iter(data.load("digits", "train", batch_size=100, seed=3, epoch=3)))
    assert not np.array_equal(full[0][1], other_epoch[1])


def test_pipelines_run_without_the_autotuner():
    # With tf.data's autotuner on, every new epoch's iterator destruction waited for its
    # background thread (up to a minute on 2 cores); `load` fixes parallelism and prefetch.
    for split in ("train", "test"):
        ds = data.load("digits", split, batch_size=100)
        assert ds.options().autotune.enabled is False
        assert ds.options().deterministic is not False
    assert data.load("digits", "test", prefetch=False).options().autotune.enabled is False


def test_augmentation_crop_and_flip_against_numpy():
    images = tf.random.stateless_uniform([6, 8, 8, 3], seed=[1, 2])
    seed = tf.constant([5, 7], tf.int64)
    out = data.augment_batch(images, seed, padding=2, flip=True).numpy()
    offsets = tf.random.stateless_uniform(
        [6, 2], seed=seed, minval=0, maxval=5, dtype=tf.int32
    ).numpy()
    coin = tf.random.stateless_uniform([6], seed=seed + 1).numpy() < 0.5
    padded = np.pad(images.numpy(), [(0, 0), (2, 2), (2, 2), (0, 0)])
    for i in range(6):
        r, c = offsets[i]
        ref = padded[i, r : r + 8, c : c + 8]
        if coin[i]:
            ref = ref[:, ::-1]
        np.testing.assert_array_equal(out[i], ref)


def test_eval_split_is_in_order_without_augmentation():
    x, y = data.load_arrays("digits", "test")
    batches = list(data.load("digits", "test", batch_size=64))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    np.testing.assert_allclose(np.concatenate([b[0] for b in batches]), x)


def test_cifar10_python_folder_and_archive(tmp_path):
    rng = np.random.default_rng(0)
    batches = _write_fake_cifar10(tmp_path / "folder" / "cifar-10-batches-py", rng)
    x, y = data.load_arrays("cifar10", "train", tmp_path / "folder")
    assert x.shape == (100, 32, 32, 3) and x.dtype == np.uint8
    first = batches["data_batch_1"][b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(x[0], first)
    assert y[:20].tolist() == batches["data_batch_1"][b"labels"]
    # The same files inside cifar10/cifar-10-python.tar.gz (the ../shared/data layout).
    archive = tmp_path / "arch" / "cifar10" / "cifar-10-python.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "folder" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    xt, yt = data.load_arrays("cifar10", "test", tmp_path / "arch")
    assert xt.shape == (20, 32, 32, 3)
    assert yt.tolist() == batches["test_batch"][b"labels"]
    ds = data.load("cifar10", "test[:10]", tmp_path / "arch", batch_size=4)
    xb, yb = next(iter(ds))
    assert xb.dtype == tf.float32 and float(tf.reduce_max(xb)) <= 1.0 and yb.shape == (4,)


def test_cifar100_folder(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    batches = {}
    for split in ("train", "test"):
        batch = _cifar_batch(12, rng, fine=True)
        # The official pickles hold both label sets: 100 fine classes and 20 coarse ones.
        batch[b"fine_labels"] = rng.integers(20, 100, size=12).tolist()
        batch[b"coarse_labels"] = rng.integers(0, 20, size=12).tolist()
        batches[split] = batch
        with open(folder / split, "wb") as f:
            pickle.dump(batch, f)
    x, y = data.load_arrays("cifar100", "test", tmp_path)
    assert x.shape == (12, 32, 32, 3) and data.info("cifar100").num_classes == 100
    assert y.tolist() == batches["test"][b"fine_labels"]  # fine, not coarse, labels
    rows = np.asarray(batches["test"][b"data"]).reshape(12, 3, 32, 32).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(x, rows)  # channel planes -> HWC
    xb, _ = next(iter(data.load("cifar100", "test", tmp_path, batch_size=12)))
    np.testing.assert_allclose(xb.numpy(), rows.astype(np.float32) / 255.0, rtol=1e-6)


def test_tiny_imagenet_layout(tmp_path):
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    (root).mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids))
    rng = np.random.default_rng(2)
    for w in wnids:
        (root / "train" / w / "images").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
                root / "train" / w / "images" / f"{w}_{i}.JPEG"
            )
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i, w in enumerate(["n02", "n01", "n02"]):
        Image.fromarray(np.full((64, 64, 3), i, np.uint8)).save(
            root / "val" / "images" / f"val_{i}.JPEG"
        )
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines))
    x, y = data.load_arrays("tiny_imagenet", "train", tmp_path)
    assert x.shape == (6, 64, 64, 3) and y.tolist() == [0, 0, 0, 1, 1, 1]
    _, yt = data.load_arrays("tiny_imagenet", "test", tmp_path)
    assert yt.tolist() == [1, 0, 1]


def test_npz_dataset(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "mine.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8),
        y_train=np.arange(10) % 4,
        x_test=rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8),
        y_test=np.arange(4),
    )
    info = data.info(f"npz:{path}")
    assert info.num_classes == 4 and info.image_shape == (8, 8, 3)
    x, y = next(iter(data.load(f"npz:{path}", "test", batch_size=4)))
    assert x.shape == (4, 8, 8, 3) and y.numpy().tolist() == [0, 1, 2, 3]
    with np.load(path) as raw:  # uint8 pixels are scaled by exactly 1/255
        np.testing.assert_allclose(x.numpy(), raw["x_test"] / 255.0, rtol=1e-6)
        raw_train = raw["x_train"]
    xf = (raw_train / 255.0).astype(np.float32)
    np.testing.assert_allclose(info.mean, xf.mean(axis=(0, 1, 2)), rtol=1e-5)
    # Float pixels in [0, 1] are kept as they are.
    floats = tmp_path / "floats.npz"
    np.savez(floats, x_train=xf, y_train=np.arange(10) % 4, x_test=xf[:4], y_test=np.arange(4))
    xb, _ = next(iter(data.load(f"npz:{floats}", "test", batch_size=4)))
    np.testing.assert_array_equal(xb.numpy(), xf[:4])
    np.savez(
        tmp_path / "bad.npz",
        x_train=np.full((2, 4, 4), 3.0),
        y_train=[0, 1],
        x_test=np.zeros((1, 4, 4)),
        y_test=[0],
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        data.load_arrays(f"npz:{tmp_path / 'bad.npz'}", "train")


def test_real_cifar10_from_shared_data(shared_data_dir):
    x, y = data.load_arrays("cifar10", "test", shared_data_dir / "cifar10")
    assert x.shape == (10000, 32, 32, 3) and np.bincount(y).tolist() == [1000] * 10
    np.testing.assert_allclose(x.reshape(-1, 3).mean(0), (126.0, 123.7, 114.9), atol=0.1)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="Unknown dataset 'mnist'"):
        data.load("mnist")
    with pytest.raises(ValueError, match="Unknown split"):
        data.load("digits", "validation")
    with pytest.raises(FileNotFoundError) as err:
        data.load("cifar10", "train", data_dir=tmp_path)
    message = str(err.value)
    assert "cifar-10-python.tar.gz" in message and str(tmp_path) in message
    assert "never downloads" in message
    with pytest.raises(FileNotFoundError, match="tiny-imagenet-200"):
        data.load_arrays("tiny_imagenet", "train", tmp_path)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="not a readable CIFAR archive"):
        data.load_arrays("cifar10", "test", tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        data.load("digits", batch_size=0)
    with pytest.raises(FileNotFoundError, match="npz"):
        data.load_arrays("npz:/nonexistent/file.npz", "train")


@pytest.mark.parametrize(
    "case, match",
    [
        ("nan_pixels", "NaN or infinite"),
        ("inf_pixels", "NaN or infinite"),
        ("negative_label", r"labels must be in >= 0, found range \[-1, 3\]"),
        ("fractional_label", "labels must be integers"),
        ("bad_rank", r"\[N, H, W, C\]"),
        ("int_pixels", "uint8"),
    ],
)
def test_npz_refuses_bad_arrays(tmp_path, case, match):
    x = np.random.default_rng(0).random((8, 4, 4, 3)).astype(np.float32)
    y = np.arange(8) % 4
    if case == "nan_pixels":
        x[3, 1, 1, 0] = np.nan
    elif case == "inf_pixels":
        x[0, 0, 0, 2] = np.inf
    elif case == "negative_label":
        y = y - (y == 0).astype(int) * 1  # class 0 becomes -1
    elif case == "fractional_label":
        y = y + 0.5
    elif case == "bad_rank":
        x = x.reshape(8, -1)
    elif case == "int_pixels":
        x = (x * 255).astype(np.int32)
    path = tmp_path / f"{case}.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    with pytest.raises(ValueError, match=match):
        data.load_arrays(f"npz:{path}", "train")


def test_named_datasets_refuse_labels_out_of_range(tmp_path):
    """A CIFAR-10 file with a label of 10 is refused, not trained on as an 11th class."""
    rng = np.random.default_rng(4)
    batches = _write_fake_cifar10(tmp_path / "cifar-10-batches-py", rng, n=4)
    batches["test_batch"][b"labels"][2] = 10
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump(batches["test_batch"], f, protocol=4)
    with pytest.raises(ValueError, match=r"cifar10 split 'test'.*\[0, 10\)"):
        data.load_arrays("cifar10", "test", tmp_path)


def test_check_arrays_accepts_integral_float_labels():
    x = np.zeros((3, 2, 2, 1), np.uint8)
    _, y = data.check_arrays(x, np.array([0.0, 2.0, 1.0]), "mine", num_classes=3)
    assert y.dtype == np.int64 and y.tolist() == [0, 2, 1]


# ------------------------------------------------------------------------------- the registry


def test_unknown_dataset_names_list_the_registered_ones():
    assert data.names() == ("digits", "cifar10", "cifar100", "tiny_imagenet")
    assert data.DATASETS == (*data.names(), "npz:<path>")
    expected = "Available: ['digits', 'cifar10', 'cifar100', 'tiny_imagenet', 'npz:<path>']"
    for bad in ("mnist", "npz:", None, 3):
        with pytest.raises(ValueError, match=f"Unknown dataset {bad!r}") as err:
            data.check_name(bad)
        assert expected in str(err.value)
    for call in (data.lookup, data.info, data.load_arrays, data.load):
        with pytest.raises(ValueError, match="Unknown dataset 'mnist'"):
            call("mnist")
    with pytest.raises(ValueError, match="not a registered dataset"):
        data.lookup("npz:/some/file.npz")
    assert data.check_name("npz:/some/file.npz") == "npz:/some/file.npz"


@pytest.mark.parametrize(
    "name, num_classes, image_shape, mean, std, crop_padding",
    [
        ("cifar10", 10, (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4),
        ("cifar100", 100, (32, 32, 3), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 4),
        ("tiny_imagenet", 200, (64, 64, 3), (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821), 8),
    ],
)
def test_registered_datasets_keep_their_facts(
    name, num_classes, image_shape, mean, std, crop_padding
):
    assert data.lookup(name).num_classes == num_classes
    # `info` needs no files for these (the statistics are registered).
    assert data.info(name, data_dir="/nonexistent") == data.DatasetInfo(
        name, num_classes, image_shape, mean, std, flip=True, crop_padding=crop_padding
    )


def test_digits_info_is_computed_from_its_training_split():
    x, _ = data.load_arrays("digits", "train")
    assert data.lookup("digits").stats is None
    assert data.info("digits") == data.DatasetInfo(
        "digits",
        10,
        (32, 32, 3),
        tuple(float(v) for v in x.mean(axis=(0, 1, 2))),
        tuple(float(v) for v in x.std(axis=(0, 1, 2))),
        flip=False,
        crop_padding=2,
    )


def test_register_a_dataset(tmp_path, monkeypatch):
    from tempscale_tf.data import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # undone after the test
    rng = np.random.default_rng(5)
    arrays = {
        "train": (rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8), np.arange(12) % 3),
        "test": (rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8), np.arange(5) % 3),
    }
    seen_dirs = []

    def loader(split_name, data_dir):
        seen_dirs.append(data_dir)
        return arrays[split_name]

    spec = data.register("toy", loader, num_classes=3, image_shape=(8, 8, 3), crop_padding=1)
    assert data.lookup("toy") is spec and data.names()[-1] == "toy"
    x, y = data.load_arrays("toy", "train[2:6]", tmp_path)
    np.testing.assert_array_equal(x, arrays["train"][0][2:6])
    assert y.dtype == np.int64 and seen_dirs == [tmp_path]
    info = data.info("toy", tmp_path)  # no stats registered: computed in [0, 1] units
    np.testing.assert_allclose(
        info.mean, (arrays["train"][0] / 255).mean(axis=(0, 1, 2)), rtol=1e-5
    )
    assert (info.num_classes, info.image_shape, info.flip, info.crop_padding) == (
        3,
        (8, 8, 3),
        True,
        1,
    )
    xb, yb = next(iter(data.load("toy", "test", tmp_path, batch_size=5)))
    assert xb.shape == (5, 8, 8, 3) and yb.numpy().tolist() == [0, 1, 2, 0, 1]
    with pytest.raises(ValueError, match="already registered"):
        data.register("toy", loader, num_classes=3, image_shape=(8, 8, 3))
    with pytest.raises(ValueError, match="npz"):
        data.register("npz:toy", loader, num_classes=3, image_shape=(8, 8, 3))


def test_subset_indices_is_the_one_seeded_sample():
    def reference(n, k, seed):
        return np.sort(np.random.default_rng(seed).permutation(n)[:k])

    np.testing.assert_array_equal(data.subset_indices(100, 10), reference(100, 10, 12345))
    np.testing.assert_array_equal(data.subset_indices(100, 10, seed=0), reference(100, 10, 0))
    for everything in (None, 0, 100, 250):
        np.testing.assert_array_equal(data.subset_indices(100, everything), np.arange(100))
    # `load(subset=...)` keeps exactly that sample.
    x, y = data.load_arrays("digits", "test")
    keep = data.subset_indices(len(y), 50)
    batches = list(data.load("digits", "test", batch_size=50, subset=50))
    np.testing.assert_array_equal(batches[0][1], y[keep])
