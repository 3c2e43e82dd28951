"""Your own data, conditioning and networks: data files of every format round-trip through train,
evaluate, sample and resume; bad files get one line; a covariate or attributes condition the
samples as they should; conv and gated bodies build for any image shape; a network of your own
trains, evaluates and resumes through `train`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import pyro_vae
from pyro_vae import UserError
from pyro_vae.data import load_dataset
from pyro_vae.estimators import importance_sampled
from pyro_vae.nets import NETS, Body
from run_helpers import hashes

SMALL = dict(epochs=1, batch_size=32, z_dim=2, hidden=16)


def digit_arrays(n=300, seed=0):
    """n digits images (8x8, 0..16 grey levels as 0-255 bytes) and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    order = np.random.default_rng(seed).permutation(len(d.images))[:n]
    return (d.images[order] * 255 / 16).round().astype(np.uint8), d.target[order]


def covariate_arrays(n=3000, d=12, seed=0):
    """x depends on a known covariate t: x_j = t * w_j + noise, so a model given t should draw x
    whose projection on w moves with slope 1 in t."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(-2, 2, n).astype(np.float32)
    w = np.linspace(-1, 1, d).astype(np.float32)
    x = t[:, None] * w + 0.1 * rng.standard_normal((n, d)).astype(np.float32)
    return x, t, w


def write_folder(root, images, labels, colour=False, suffix=".png"):
    for k in np.unique(labels):
        (root / f"class{k}").mkdir(parents=True)
    for i, (img, k) in enumerate(zip(images, labels)):
        im = Image.fromarray(np.stack([img, 255 - img, img // 2], -1) if colour else img)
        im.save(root / f"class{k}" / f"{i}{suffix}")


def round_trip(path, tmp_path, **settings):
    """train one epoch, evaluate, sample, resume to epoch 2: what every data format must survive."""
    run = pyro_vae.train(dataset=str(path), out=tmp_path / "run", progress=False, **{**SMALL, **settings})
    result = pyro_vae.evaluate_run(run, iw_samples=5, progress=False, fidelity_samples=2)
    assert np.isfinite(result["test_elbo"]) and result["test_log_likelihood"] >= result["test_elbo"] - 1e-3
    sample = pyro_vae.sample_run(run, n=4)
    assert sample.is_file()
    pyro_vae.train(resume=run, epochs=2, progress=False)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    return run, result


def test_npz_images_with_labels_round_trip(tmp_path):
    x, labels = digit_arrays()
    np.savez(tmp_path / "mine.npz", x=x, labels=labels)
    run, result = round_trip(tmp_path / "mine.npz", tmp_path, model="cvae1")
    facts = json.loads((run / "data.json").read_text())
    assert facts["kind"] == "pixels" and "255" in facts["scaling"] and facts["condition"] == "label"
    assert facts["test"].startswith("carved off: 60 of 300") and len(facts["test_indices"]) == 60
    assert facts["sha256"] and facts["shape"] == [8, 8]
    assert 0 <= result["label_fidelity"] <= 1  # a reference predictor trained on this data scores the samples


def test_a_data_set_given_as_a_path_object_or_not_a_name(tmp_path):
    """load_dataset(pathlib.Path(...)) ended in "'PosixPath' object has no attribute 'startswith'",
    and load_dataset(None) likewise: a Path now loads as its string does, anything else is one line."""
    x, labels = digit_arrays()
    np.savez(tmp_path / "mine.npz", x=x, labels=labels)
    by_path, by_str = load_dataset(tmp_path / "mine.npz"), load_dataset(str(tmp_path / "mine.npz"))
    assert by_path.name == by_str.name == str(tmp_path / "mine.npz")
    assert all(torch.equal(a, b) for split in ("train", "val", "test")
               for a, b in zip(by_path.splits[split], by_str.splits[split]) if torch.is_tensor(a))
    # and so do train and Config: a run records the path's string (train refused a Path: "dataset must be a string")
    run = pyro_vae.train(model="vae", dataset=tmp_path / "mine.npz", epochs=1, z_dim=2, hidden=8, progress=False,
                         out=tmp_path / "run")
    assert json.loads((run / "config.json").read_text())["dataset"] == str(tmp_path / "mine.npz")
    assert pyro_vae.Config(dataset=tmp_path / "mine.npz", init_from=run).init_from == str(run)
    for bad in (None, 3, b"digits"):
        with pytest.raises(pyro_vae.BadType, match=r"^name must be a data set's name \(digits, .*\) or the path of a "
                                                   r"file or folder, got (NoneType|int|bytes)$"):
            load_dataset(bad)


def test_npy_and_given_test_split(tmp_path):
    x, labels = digit_arrays()
    np.save(tmp_path / "x.npy", x.reshape(len(x), -1))  # vectors of 64 bytes, no labels
    run, _ = round_trip(tmp_path / "x.npy", tmp_path)
    assert json.loads((run / "data.json").read_text())["shape"] == [64]
    np.savez(tmp_path / "split.npz", x=x[:200], labels=labels[:200], x_test=x[200:], labels_test=labels[200:])
    data = load_dataset(str(tmp_path / "split.npz"))
    assert len(data.splits["test"][0]) == 100 and data.facts["test"] == "given"


def test_true_false_arrays_load_as_their_zeros_and_ones(tmp_path):
    """Binary images, two-class labels and attributes saved as NumPy booleans (once refused as "not
    numbers") load exactly as the same arrays saved as 0 and 1."""
    rng = np.random.default_rng(0)
    x, labels, y = rng.random((120, 3, 5)) > 0.5, rng.random(120) > 0.5, rng.random((120, 2)) > 0.5
    np.savez(tmp_path / "bool.npz", x=x, labels=labels, x_test=x[:30], labels_test=labels[:30])
    np.savez(tmp_path / "ints.npz", x=x.astype(np.uint8), labels=labels.astype(int), x_test=x[:30].astype(np.uint8),
             labels_test=labels[:30].astype(int))
    np.savez(tmp_path / "attr.npz", x=x, y=y)
    np.savez(tmp_path / "attr01.npz", x=x.astype(np.float32), y=y.astype(np.float32))
    for a, b in [("bool", "ints"), ("attr", "attr01")]:
        one, other = (load_dataset(str(tmp_path / f"{name}.npz")) for name in (a, b))
        assert one.kind == other.kind == "pixels" and one.condition == other.condition and one.y_dim == other.y_dim
        for split in ("train", "val", "test"):
            for u, v in zip(one.splits[split], other.splits[split]):
                assert u.dtype == v.dtype and torch.equal(u, v), (a, split)
    assert load_dataset(str(tmp_path / "bool.npz")).classes == ["0", "1"]


@pytest.mark.parametrize("colour", [False, True])
def test_image_folder_round_trip(tmp_path, colour):
    x, labels = digit_arrays(120)
    write_folder(tmp_path / "images", x, labels, colour=colour)
    data = load_dataset(str(tmp_path / "images"))
    assert data.shape == ((3, 8, 8) if colour else (8, 8)) and data.classes == [f"class{k}" for k in range(10)]
    assert data.x_dim == (192 if colour else 64)
    round_trip(tmp_path / "images", tmp_path, model="cvae2", net="conv")


def test_image_folder_with_train_and_test(tmp_path):
    x, labels = digit_arrays(150)
    write_folder(tmp_path / "set" / "train", x[:100], labels[:100])
    write_folder(tmp_path / "set" / "test", x[100:], labels[100:])
    data = load_dataset(str(tmp_path / "set"))
    assert len(data.splits["test"][0]) == 50 and data.facts["test"] == "given"


def test_from_arrays_in_memory_through_train_evaluate_resume(tmp_path):
    x, t, _ = covariate_arrays(600)
    data = pyro_vae.Dataset.from_arrays(torch.as_tensor(x), y=t, y_names=["t"])
    assert data.kind == "real" and data.condition == "covariates" and data.y_dim == 1
    history = pyro_vae.fit(pyro_vae.build_model("cvae2", data.x_dim, data.y_dim, z_dim=2, hidden=16,
                                                likelihood="gaussian"), data, epochs=1, progress=False)
    assert np.isfinite(history[-1]["val_elbo"])
    run = pyro_vae.train(model="cvae1", dataset=data, out=tmp_path / "run", progress=False, **SMALL)
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == "run:data.npz" and config["likelihood"] == "gaussian"
    assert config["condition"] == "covariates"
    assert (run / "data.npz").is_file()
    result = pyro_vae.evaluate_run(run, iw_samples=5, progress=False)
    assert "covariate_r2" in result
    pyro_vae.train(resume=run, epochs=2, progress=False)


def test_a_path_handed_to_from_arrays_says_how_to_read_a_file(tmp_path):
    for path in ("mine.npz", tmp_path / "mine.npz"):
        with pytest.raises(UserError, match=r"is a name, not an array; a data file is read by load_dataset\(path\)"):
            pyro_vae.Dataset.from_arrays(path)


@pytest.mark.parametrize("arrays, needle", [
    (dict(x=np.zeros((10, 4)), labels=np.zeros(9, int)), "x has 10 examples but labels has 9"),
    (dict(x=np.zeros((10, 4)), labels=-np.ones(10, int)), "has label -1"),
    (dict(x=np.zeros((10, 4)), labels=np.full(10, 0.5)), "whole class numbers"),
    (dict(x=np.where(np.eye(10, 4) > 0, np.nan, 0.0)), "NaN or infinite values (example 0"),
    (dict(x=np.zeros((10, 4)), x_test=np.zeros((5, 3))), "test examples (3,)"),
    (dict(x=np.zeros((10, 4)), y=np.zeros(10), x_test=np.zeros((5, 4))), "y given for one split only"),
    (dict(x=np.zeros((10, 4)), weights=np.zeros(10)), "unknown array(s) weights"),
    (dict(labels=np.zeros(10, int)), "no array named x"),
    (dict(x=np.zeros((0, 4))), "N > 0"),
    (dict(x=np.zeros(10)), "give (N, D) vectors"),
    (dict(x=np.array([["a", "b"], ["c", "d"]])), "not real numbers"),
    (dict(x=np.ones((10, 4), np.complex64)), "holds complex64 values, not real numbers"),
    (dict(x=np.zeros((10, 4)), labels=np.full(10, 10 ** 9)), "at most 10000 classes"),  # a one-hot of 10**9: OOM
    (dict(x=np.zeros((10, 4)), labels=np.arange(10) % 3, classes=np.array([["a", "b", "c"]])), "shape (K,)"),
    (dict(x=np.zeros((10, 4)), y=np.zeros((10, 2)), y_names=np.array([["a", "b"]])), "shape (K,)"),
])
def test_bad_npz_gets_one_line(tmp_path, arrays, needle):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=None) as e:
        load_dataset(str(tmp_path / "bad.npz"))
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


@pytest.mark.parametrize("damage", ["truncated", "pickled", "not numpy", "wrong suffix"])
def test_damaged_files_get_one_line(tmp_path, damage):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((10, 4)))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "pickled":
        np.savez(path, x=np.array([{"a": 1}] * 10, dtype=object))
    elif damage == "not numpy":
        path = tmp_path / "d.npy"
        path.write_text("x,y\n1,2\n")
    else:
        path = tmp_path / "d.csv"
        path.write_text("1,2\n")
    with pytest.raises(UserError) as e:
        load_dataset(str(path))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
def test_a_header_declaring_more_than_memory_is_refused_before_numpy_allocates(tmp_path, suffix):
    """A 200-byte file whose .npy header declares 37 TiB: np.load allocated first and failed with
    MemoryError, which the CLI reported as 'out of memory; try a smaller --batch-size'. Now refused
    in one line naming the array, its shape and the machine's memory."""
    import io
    import zipfile

    from numpy.lib import format as npy

    header = io.BytesIO()
    npy.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**7, 10**6)})  # 37 TiB
    blob = header.getvalue() + bytes(4096)
    path = tmp_path / f"huge{suffix}"
    if suffix == ".npz":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("x.npy", blob)
    else:
        path.write_bytes(blob)
    with pytest.raises(UserError) as e:
        load_dataset(str(path))
    message = str(e.value)
    assert message.startswith(f"{path}: x declares shape (10000000, 1000000) of float32, 37253 GiB, more than this machine")
    assert "\n" not in message


@pytest.mark.parametrize("make, needle", [
    (lambda root: root.mkdir(), "no class subfolders"),
    (lambda root: (root / "a").mkdir(parents=True), "hold no images"),
    (lambda root: ((root / "a").mkdir(parents=True), (root / "a" / "notes.txt").write_text("hi")),
     "notes.txt: not a PNG or JPEG image"),
    (lambda root: ((root / "a").mkdir(parents=True), (root / "a" / "broken.png").write_bytes(b"\x89PNG junk")),
     "broken.png: not a readable image"),
    (lambda root: ((root / "a").mkdir(parents=True), Image.new("L", (8, 8)).save(root / "a" / "1.png"),
                   Image.new("L", (9, 8)).save(root / "a" / "2.png")), "images of 2 sizes"),
    # among many, the odd one is named (it had said only "images of 2 sizes (8x8, 9x8)")
    (lambda root: ((root / "a").mkdir(parents=True), (root / "b").mkdir(),
                   [Image.new("L", (8, 8)).save(root / c / f"{i}.png") for c in "ab" for i in range(5)],
                   Image.new("L", (8, 7)).save(root / "b" / "3x.png")), "10 of 11 are 8x8, ROOT/b/3x.png is 8x7"),
])
def test_bad_image_folder_gets_one_line(tmp_path, make, needle):
    make(tmp_path / "images")
    with pytest.raises(UserError) as e:
        load_dataset(str(tmp_path / "images"))
    needle = needle.replace("ROOT", str(tmp_path / "images"))
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_folder_of_16_bit_images_keeps_its_grey_levels(tmp_path):
    """Pillow's convert("L") clips 16-bit grey at 255: a folder of 16-bit PNGs used to load as nearly
    all white. Now each image is read by its own depth, 8-bit and 16-bit alike, into [0, 1]."""
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, size=(12, 6, 5), dtype=np.uint16)
    shallow = rng.integers(0, 256, size=(12, 6, 5), dtype=np.uint8)
    for k, (a, b) in enumerate(zip(deep, shallow)):
        (tmp_path / "set" / "deep").mkdir(parents=True, exist_ok=True)
        (tmp_path / "set" / "byte").mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(tmp_path / "set" / "deep" / f"{k:02d}.png")
        Image.fromarray(b).save(tmp_path / "set" / "byte" / f"{k:02d}.png")
    assert Image.open(tmp_path / "set" / "deep" / "00.png").mode.startswith("I")  # written 16-bit
    source, names = pyro_vae.data.read_image_folder(tmp_path / "set")
    assert names == ["byte", "deep"]
    expected = np.concatenate([shallow / 255, deep / 65535]).astype(np.float32)
    assert np.array_equal(source["x"], expected) and source["labels"].tolist() == [0] * 12 + [1] * 12
    data = load_dataset(str(tmp_path / "set"))
    assert data.kind == "pixels" and abs(float(data.splits["train"][0].mean()) - 0.5) < 0.05  # not all white


def test_hidden_folders_are_not_classes_and_a_decompression_bomb_is_one_line(tmp_path, monkeypatch):
    x, labels = digit_arrays(40)
    write_folder(tmp_path / "images", x, labels % 2)
    (tmp_path / "images" / ".git").mkdir()
    (tmp_path / "images" / ".git" / "config").write_text("[core]")
    (tmp_path / "images" / ".ipynb_checkpoints").mkdir()
    assert load_dataset(str(tmp_path / "images")).classes == ["class0", "class1"]
    from PIL import Image as PILImage
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 20)  # an 8x8 digit is then over twice the limit
    with pytest.raises(UserError, match="decompression bomb") as e:
        load_dataset(str(tmp_path / "images"))
    assert "\n" not in str(e.value) and ".png" in str(e.value)


def test_real_data_refuses_a_pixel_likelihood_before_writing(tmp_path, cli_error):
    x, t, _ = covariate_arrays(200)
    np.savez(tmp_path / "real.npz", x=x, y=t)
    cli_error(["train", "--dataset", str(tmp_path / "real.npz"), "--likelihood", "bernoulli",
               "--out", str(tmp_path / "run")], "x holds real values", "use --likelihood gaussian or studentt")
    assert not (tmp_path / "run").exists()
    cli_error(["train", "--model", "cvae1", "--dataset", str(tmp_path / "real.npz"), "--condition", "attributes",
               "--out", str(tmp_path / "run")], "attributes are 0 or 1")
    np.save(tmp_path / "x.npy", x)
    cli_error(["train", "--model", "cvae1", "--dataset", str(tmp_path / "x.npy"), "--out", str(tmp_path / "run")],
              "cvae1 conditions on y", "has no class labels and no y")
    cli_error(["train", "--dataset", str(tmp_path / "x.npy"), "--net", "conv", "--out", str(tmp_path / "run")],
              "--net conv is for images")
    assert not (tmp_path / "run").exists()


def test_changed_data_file_is_refused_and_the_run_kept(tmp_path):
    x, labels = digit_arrays(200)
    np.savez(tmp_path / "mine.npz", x=x, labels=labels)
    run = pyro_vae.train(dataset=str(tmp_path / "mine.npz"), out=tmp_path / "run", progress=False, **SMALL)
    before = hashes(run)
    x[0, 0, 0] = 255 - x[0, 0, 0]
    np.savez(tmp_path / "mine.npz", x=x, labels=labels)
    with pytest.raises(UserError, match="changed since this run was trained"):
        pyro_vae.evaluate_run(run, iw_samples=5, progress=False)
    assert hashes(run) == before


def test_a_moved_data_file_is_named_and_a_symlink_put_back_in_its_place_serves(tmp_path, cli_error):
    """The run's data file moved away: the error said "unknown data set ...; choose from digits,
    ..." as for a typo. Now it names the file as gone, and the remedy it gives (a symlink at the
    recorded path) works: the path is kept as named, not resolved through links, and the
    checksum still guards the content. A run trained through a symlink records the link."""
    x, labels = digit_arrays(200)
    np.savez(tmp_path / "mine.npz", x=x, labels=labels)
    run = pyro_vae.train(dataset=str(tmp_path / "mine.npz"), out=tmp_path / "run", progress=False, **SMALL)
    before = hashes(run)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "mine.npz").rename(tmp_path / "elsewhere" / "mine.npz")
    cli_error(["evaluate", str(run), "--iw-samples", "2"], f"the data set {tmp_path / 'mine.npz'} is not there",
              "moved or deleted", "symlink")
    (tmp_path / "mine.npz").symlink_to(tmp_path / "elsewhere" / "mine.npz")
    assert pyro_vae.evaluate_run(run, iw_samples=2, progress=False)["checkpoint_epoch"] == SMALL["epochs"]
    assert {k: v for k, v in hashes(run).items() if k != "eval.json"} == before

    linked = pyro_vae.train(dataset=str(tmp_path / "mine.npz"), out=tmp_path / "linked", progress=False, **SMALL)
    assert json.loads((linked / "config.json").read_text())["dataset"] == str(tmp_path / "mine.npz")
    assert json.loads((linked / "data.json").read_text())["source"] == str(tmp_path / "elsewhere" / "mine.npz")


def slope_of_samples(run, values, w):
    """For each covariate value, the mean projection of samples on w (in the data's own units)."""
    model, config, data = pyro_vae.runs.load_run(run)
    facts = json.loads((run / "data.json").read_text())
    assert facts["kind"] == "real"
    x_train = np.load(config.dataset)["x"] if config.dataset.endswith(".npz") else None
    mean, sd = x_train.mean(0), x_train.std(0)  # undo the standardisation
    from pyro_vae.estimators import decode
    from pyro_vae.models import model_inputs

    means = []
    for t in values:
        c = torch.full((500, 1), float(t))
        x, _ = decode(model, *model_inputs(model, torch.zeros(500, data.x_dim), c, 0))
        means.append(float(((x.numpy() * sd + mean) @ w).mean() / (w @ w)))
    return np.polyfit(values, means, 1)[0]


def test_cvae1_follows_the_covariate_it_is_given(tmp_path):
    torch.manual_seed(0)
    x, t, w = covariate_arrays()
    np.savez(tmp_path / "cov.npz", x=x, y=t)
    run = pyro_vae.train(model="cvae1", dataset=str(tmp_path / "cov.npz"), epochs=15, batch_size=64, z_dim=2,
                         hidden=32, out=tmp_path / "run", progress=False)
    slope = slope_of_samples(run, [-1.5, -0.5, 0.5, 1.5], w)
    assert slope == pytest.approx(1.0, abs=0.15)  # x = t w + noise: the samples' projection moves 1:1 with t
    result = pyro_vae.evaluate_run(run, iw_samples=5, progress=False)
    assert result["covariate_r2"][0] > 0.8 and result["covariate_slope"][0] == pytest.approx(1.0, abs=0.2)
    out = pyro_vae.sample_run(run, n=8, covariates=[1.0])
    assert out.name == "samples-covariates1-n8-seed0.png"
    with pytest.raises(UserError, match="takes 1 finite numbers"):
        pyro_vae.sample_run(run, n=8, covariates=[1.0, 2.0])
    with pytest.raises(UserError, match="conditions on covariates: --label does not apply"):
        pyro_vae.sample_run(run, n=8, label=1)
    pyro_vae.sample_run(run, n=8, covariates=[-1.5])
    # cvae3 predicts the covariate from x, with a Gaussian over it
    run3 = pyro_vae.train(model="cvae3", dataset=str(tmp_path / "cov.npz"), out=tmp_path / "run3", progress=False,
                          **SMALL)
    assert json.loads((run3 / "config.json").read_text())["likelihood"] == "gaussian"
    scored = pyro_vae.evaluate_run(run3, iw_samples=5, progress=False)
    assert np.isfinite(scored["test_log_likelihood"]) and "test_accuracy" not in scored
    # the sample files it wrote are the run's own: --overwrite may replace the whole run
    pyro_vae.train(model="vae", dataset=str(tmp_path / "cov.npz"), out=run, overwrite=True, progress=False, **SMALL)
    assert not list(run.glob("samples-covariates*"))


def test_multi_hot_attributes_condition_the_samples(tmp_path):
    """x = [a0 block, a1 block, a2 block] + noise: samples given attributes switch their blocks on."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, (2000, 3)).astype(np.float32)
    x = np.clip(np.repeat(a, 4, 1) * 0.8 + 0.1 + 0.05 * rng.standard_normal((2000, 12)), 0, 1).astype(np.float32)
    np.savez(tmp_path / "attr.npz", x=x, y=a, y_names=["left", "middle", "right"])
    run = pyro_vae.train(model="cvae2", dataset=str(tmp_path / "attr.npz"), epochs=15, batch_size=64, z_dim=2,
                         hidden=32, out=tmp_path / "run", progress=False)
    assert json.loads((run / "config.json").read_text())["condition"] == "attributes"
    result = pyro_vae.evaluate_run(run, iw_samples=5, progress=False)
    assert result["attribute_agreement"] > 0.9, result
    assert len(result["attribute_agreement_per_attribute"]) == 3
    out = pyro_vae.sample_run(run, n=4, attributes=[1, 0, 1])
    assert out.is_file()
    with pytest.raises(UserError, match=r"takes 3 finite numbers \(left, middle, right\), got 3, not all finite"):
        pyro_vae.sample_run(run, n=4, attributes=[float("nan"), 0, 1])
    with pytest.raises(UserError, match=r"got 2$"):
        pyro_vae.sample_run(run, n=4, attributes=[1, 0])
    # cvae3 predicts the attributes, with a Bernoulli per attribute
    run3 = pyro_vae.train(model="cvae3", dataset=str(tmp_path / "attr.npz"), out=tmp_path / "run3", progress=False,
                          **SMALL)
    assert json.loads((run3 / "config.json").read_text())["likelihood"] == "bernoulli"
    with pytest.raises(UserError, match="cvae3 predicts y, here attributes: its likelihood is bernoulli"):
        pyro_vae.train(model="cvae3", dataset=str(tmp_path / "attr.npz"), likelihood="categorical",
                       out=tmp_path / "run4", progress=False, **SMALL)


@pytest.mark.parametrize("net", ["conv", "gated"])
@pytest.mark.parametrize("shape", [(8, 8), (1, 13, 17), (3, 16, 16), (28, 28)])
def test_bodies_build_for_image_shapes_and_bound_holds(net, shape):
    torch.manual_seed(0)
    n = int(np.prod(shape))
    x = torch.bernoulli(torch.full((6, n), 0.3))
    for name in ("vae", "cvae1", "cvae3"):
        model = pyro_vae.build_model(name, n, 3 if name != "cvae3" else 3, z_dim=2, hidden=[16, 8], net=net,
                                     shape=shape)
        y = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).float()
        args = (x,) if name == "vae" else (x, y)
        trainer = pyro_vae.Trainer(model, lr=1e-3)
        loss, _ = trainer._step(args, validate=True)
        assert torch.isfinite(loss)
        log_p, elbo = importance_sampled(model.model, model.guide, *args, samples=50)
        assert (log_p >= elbo - 1e-4).all()
    if net == "conv":
        body = Body(NETS["conv"], (16,), "relu", shape, reads_x=True)(n + 3, 5)
        assert body(torch.zeros(2, 4, n + 3)).shape == (2, 4, 5)  # particle dims pass through
        out = Body(NETS["conv"], (16,), "relu", shape)(2, n)(torch.zeros(7, 2))
        assert out.shape == (7, n)


def test_hidden_layers_and_activation():
    model = pyro_vae.build_model("vae", 64, z_dim=2, hidden=[32, 16], activation="relu")
    linears = [m for m in model.encoder.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 32), (32, 16), (16, 4)]
    assert any(isinstance(m, nn.ReLU) for m in model.encoder.net)
    with pytest.raises(UserError, match="unknown activation"):
        pyro_vae.build_model("vae", 64, z_dim=2, hidden=8, activation="swish")
    with pytest.raises(ValueError, match="hidden must be a positive whole number or a list"):
        pyro_vae.build_model("vae", 64, z_dim=2, hidden=[8, 0])


class MyEncoder(nn.Module):
    """A network of one's own: a residual block, used as the encoder's body."""

    def __init__(self, *, in_dim, out_dim, hidden, activation, shape, reads_x):
        super().__init__()
        self.inp = nn.Linear(in_dim, hidden[0])
        self.block = nn.Sequential(nn.Tanh(), nn.Linear(hidden[0], hidden[0]))
        self.out = nn.Linear(hidden[0], out_dim)

    def forward(self, h):
        h = self.inp(h)
        return self.out(h + self.block(h))


def test_a_network_of_your_own_trains_evaluates_and_resumes(tmp_path, capsys):
    run = pyro_vae.train(model="cvae1", dataset="digits", encoder_net=MyEncoder, out=tmp_path / "run",
                         progress=False, train_size=64, **SMALL)
    config = json.loads((run / "config.json").read_text())
    assert config["encoder_net"] == "test_your_data:MyEncoder" and config["net"] == "mlp"
    model, _, _ = pyro_vae.runs.load_run(run)
    assert isinstance(model.encoder.net, MyEncoder) and not isinstance(model.decoder.net, MyEncoder)
    result = pyro_vae.evaluate_run(run, iw_samples=5, progress=False, fidelity_samples=2)
    assert result["test_log_likelihood"] >= result["test_elbo"] - 1e-3
    pyro_vae.train(resume=run, epochs=2, progress=False)
    with pytest.raises(UserError, match="pass the class of MyEncoder, not a built module"):
        pyro_vae.build_model("vae", 64, z_dim=2, hidden=8, nets={"encoder": MyEncoder(
            in_dim=64, out_dim=4, hidden=(8,), activation="relu", shape=(64,), reads_x=True)})


def write_idx(path, array):
    """An uncompressed IDX file of unsigned bytes, as torchvision's MNIST-style sets keep them."""
    import struct

    path.write_bytes(struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.astype(np.uint8).tobytes())


def test_torchvision_data_set_by_name(tmp_path):
    """Runs where torchvision is installed (the separate venv of the README's note); skipped elsewhere."""
    pytest.importorskip("torchvision")
    x, labels = digit_arrays(300)
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, part in (("train", slice(0, 240)), ("t10k", slice(240, 300))):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x[part])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[part])
    data = load_dataset("torchvision:FashionMNIST", data_dir=str(tmp_path))
    assert data.shape == (8, 8) and data.classes[0] == "T-shirt/top" and len(data.splits["test"][0]) == 60
    assert torch.equal(data.splits["test"][1], torch.as_tensor(labels[240:]))
    run = pyro_vae.train(model="cvae1", dataset="torchvision:FashionMNIST", data_dir=str(tmp_path),
                         out=tmp_path / "run", progress=False, **SMALL)
    result = pyro_vae.evaluate_run(run, iw_samples=5, progress=False, fidelity_samples=2)
    assert result["test_log_likelihood"] >= result["test_elbo"] - 1e-3
    pyro_vae.train(resume=run, epochs=2, progress=False)
    with pytest.raises(UserError, match="give --data-dir"):
        load_dataset("torchvision:MNIST")
    with pytest.raises(UserError, match="torchvision has no data set 'Nope'"):
        load_dataset("torchvision:Nope", data_dir=str(tmp_path))
    with pytest.raises(UserError, match="torchvision:MNIST in"):
        load_dataset("torchvision:MNIST", data_dir=str(tmp_path))  # not there, and never downloaded


def test_a_torchvision_error_without_a_message_is_one_line(tmp_path, monkeypatch):
    """torchvision stands in here (a module of one data set that raises an OSError with no message):
    the error names its type instead of failing on the empty message."""
    import sys
    import types

    class Broken:
        def __init__(self, **_):
            raise OSError()

    package, datasets = types.ModuleType("torchvision"), types.ModuleType("torchvision.datasets")
    datasets.Broken, package.datasets = Broken, datasets
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", datasets)
    with pytest.raises(UserError, match=r"torchvision:Broken in .*: OSError$"):
        load_dataset("torchvision:Broken", data_dir=str(tmp_path))


def test_torchvision_absent_is_one_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torchvision(name, *args, **kwargs):
        if name.startswith("torchvision"):
            raise ImportError("no torchvision")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    with pytest.raises(UserError, match="needs torchvision, which is not installed"):
        load_dataset("torchvision:CIFAR10", data_dir="/nowhere")
