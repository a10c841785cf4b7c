"""Datasets and batches: CIFAR format checks, image folders, splits, augmentation, loaders."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

import nas
from nas.data import Batches, augment, load_dataset, split_indices
from conftest import write_cifar10

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_cifar_directory_in_the_official_format(cifar_root):
    train = load_dataset("cifar10", cifar_root, train=True)
    test = load_dataset("cifar10", cifar_root, train=False)
    assert train.images.shape == (96, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (40, 3, 32, 32) and train.num_classes == 10
    # the pixels are the pickled rows, reshaped channel-first as CIFAR stores them
    with open(cifar_root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert torch.equal(train.images[0].reshape(-1), torch.as_tensor(raw[b"data"][0]))
    assert train.labels[:5].tolist() == raw[b"labels"][:5]
    # the cifar-10-batches-py folder itself is accepted as the root too
    again = load_dataset("cifar10", cifar_root / "cifar-10-batches-py", train=True)
    assert torch.equal(again.images, train.images)


def test_resize_once_at_load(cifar_root):
    small = load_dataset("cifar10", cifar_root, train=True, image_size=8)
    full = load_dataset("cifar10", cifar_root, train=True)
    assert small.images.shape == (96, 3, 8, 8)
    # area-like downsampling keeps the mean colour of each image
    diff = (small.images.float().mean((2, 3)) - full.images.float().mean((2, 3))).abs().max()
    assert diff < 3.0


def test_a_subset_of_the_batches_is_enough(tmp_path):
    root = write_cifar10(tmp_path, n_train=30, batches=1)
    assert len(load_dataset("cifar10", root, train=True)) == 30


def test_missing_data_says_how_to_fix_it(tmp_path):
    with pytest.raises(nas.InputError) as info:
        load_dataset("cifar10", tmp_path / "nowhere", train=True)
    msg = str(info.value)
    assert "CIFAR-10 not found" in msg and "data.download: true" in msg and "--data-dir" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("content, message", [
    (b"not a pickle", "is not a CIFAR python batch file"),
    (pickle.dumps({b"labels": [1]}), "needs the keys 'data' and 'labels'"),
    (pickle.dumps({b"data": torch.zeros(2, 100, dtype=torch.uint8).numpy(), b"labels": [0, 1]}),
     "must be uint8 rows of 3072 values"),
    (pickle.dumps({b"data": torch.zeros(2, 3072, dtype=torch.uint8).numpy(), b"labels": [0]}),
     "2 images but 1 labels"),
    (pickle.dumps({b"data": torch.zeros(1, 3072, dtype=torch.uint8).numpy(), b"labels": [12]}),
     r"labels must lie in \[0, 9\]"),
])
def test_wrong_format_fails_with_one_line(tmp_path, content, message):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(content)
    with pytest.raises(nas.InputError, match=message):
        load_dataset("cifar10", tmp_path, train=True)


def _write_folder(root: Path, classes: dict[str, int], split: str = "train") -> None:
    for i, (name, count) in enumerate(classes.items()):
        folder = root / split / name
        folder.mkdir(parents=True)
        for k in range(count):
            Image.new("RGB", (20, 12), (40 * i, 100, 200 - 40 * i)).save(folder / f"{k}.png")


def test_image_folder(tmp_path):
    _write_folder(tmp_path, {"cat": 3, "dog": 2})
    _write_folder(tmp_path, {"cat": 1, "dog": 1}, split="val")
    train = load_dataset("imagefolder", tmp_path, train=True, image_size=16)
    test = load_dataset("imagefolder", tmp_path, train=False, image_size=16)
    assert train.images.shape == (5, 3, 16, 16) and train.labels.tolist() == [0, 0, 0, 1, 1]
    assert len(test) == 2 and train.num_classes == 2
    assert train.images[0, :, 5, 5].tolist() == [0, 100, 200]  # colour kept through the resize
    assert all(s > 0 for s in train.std)


def test_image_folder_errors(tmp_path):
    with pytest.raises(nas.InputError, match="image folder not found"):
        load_dataset("imagefolder", tmp_path, train=True)
    (tmp_path / "train").mkdir()
    with pytest.raises(nas.InputError, match="has no class folders"):
        load_dataset("imagefolder", tmp_path, train=True)
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(nas.InputError, match="class folder .*empty holds no images"):
        load_dataset("imagefolder", tmp_path, train=True)


def test_unknown_dataset_suggests_the_closest():
    with pytest.raises(nas.InputError, match="unknown dataset 'cifar1'; did you mean"):
        load_dataset("cifar1", ".", train=True)


def test_split_is_disjoint_complete_and_seeded():
    a, b = split_indices(101, 0.5, seed=3)
    assert len(a) == 50 and len(b) == 51
    assert sorted(torch.cat([a, b]).tolist()) == list(range(101))
    a2, _ = split_indices(101, 0.5, seed=3)
    a3, _ = split_indices(101, 0.5, seed=4)
    assert torch.equal(a, a2) and not torch.equal(a, a3)


def test_augment_crops_flips_normalises_and_cuts_out():
    B, H = 64, 6
    images = torch.arange(B * 3 * H * H, dtype=torch.int64).remainder(251).to(torch.uint8) \
        .view(B, 3, H, H)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    plain = augment(images, mean, std)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(plain, expected, atol=1e-6)

    gen = torch.Generator().manual_seed(0)
    out = augment(images, (0, 0, 0), (1 / 255,) * 3, pad=2, flip=True, generator=gen)
    padded = torch.nn.functional.pad(images.float(), (2, 2, 2, 2))
    offsets = set()
    for b in range(B):  # every output is one window of the zero-padded image, maybe mirrored
        found = []
        for dy in range(5):
            for dx in range(5):
                window = padded[b, :, dy:dy + H, dx:dx + H]
                for mirrored in (False, True):
                    if torch.allclose(out[b], window.flip(-1) if mirrored else window, atol=1e-3):
                        found.append((dy, dx, mirrored))
        assert found, f"sample {b} is not a crop of its padded image"
        offsets.add(found[0][:2])
    assert len(offsets) > 10  # offsets really vary

    gen = torch.Generator().manual_seed(0)
    cut = augment(torch.full((200, 3, 8, 8), 255, dtype=torch.uint8), (0, 0, 0), (1, 1, 1),
                  cutout=4, generator=gen)
    holes = (cut == 0).all(1).sum((1, 2))
    assert holes.max() == 16 and holes.min() >= 4  # a 4x4 square, clipped at the borders
    assert (cut[cut != 0] == 1).all()


def test_augment_is_a_function_of_the_generator():
    images = torch.randint(0, 255, (8, 3, 8, 8), dtype=torch.uint8)
    kw = dict(mean=(0.5,) * 3, std=(0.5,) * 3, pad=2, flip=True, cutout=3)
    x1 = augment(images, generator=torch.Generator().manual_seed(1), **kw)
    x2 = augment(images, generator=torch.Generator().manual_seed(1), **kw)
    x3 = augment(images, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)


@pytest.mark.parametrize("on_device, workers", [(True, 0), (False, 0), (False, 2)])
def test_batches_cover_the_epoch_and_repeat_by_seed(cifar_root, on_device, workers):
    data = load_dataset("cifar10", cifar_root, train=True, image_size=8)
    loader = Batches(data, 32, train=True, device=torch.device("cpu"), on_device=on_device,
                     workers=workers, pad=1, seed=5)
    assert len(loader) == 3
    loader.set_epoch(0)
    first = list(loader)
    assert [x.shape for x, _ in first] == [(32, 3, 8, 8)] * 3
    labels = torch.cat([y for _, y in first])
    assert sorted(labels.tolist()) == sorted(data.labels.tolist())  # each image once
    loader.set_epoch(0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, loader))
    loader.set_epoch(1)
    assert not torch.equal(torch.cat([y for _, y in loader]), labels)


def test_test_batches_are_in_order_without_augmentation(cifar_root):
    data = load_dataset("cifar10", cifar_root, train=False)
    loader = Batches(data, 16, train=False, device=torch.device("cpu"), on_device=True, cutout=8)
    xs, ys = zip(*loader)
    assert [len(y) for y in ys] == [16, 16, 8]  # nothing dropped
    assert torch.equal(torch.cat(ys), data.labels)
    assert torch.allclose(torch.cat(xs), augment(data.images, data.mean, data.std))


def test_training_batches_drop_a_partial_last_batch_only_when_a_full_one_exists(cifar_root):
    data = load_dataset("cifar10", cifar_root, train=True)
    cpu = torch.device("cpu")
    assert len(Batches(data, 40, train=True, device=cpu, on_device=True)) == 2   # 96 = 2*40 + 16
    assert len(Batches(data, 200, train=True, device=cpu, on_device=True)) == 1  # one short batch
    assert len(Batches(data, 40, train=True, device=cpu, on_device=True, max_steps=1)) == 1


@pytest.mark.skipif(not (SHARED / "cifar-10-batches-py").is_dir(), reason="no shared CIFAR subset")
def test_the_shared_real_cifar_subset_loads():
    train = load_dataset("cifar10", SHARED, train=True)
    test = load_dataset("cifar10", SHARED, train=False)
    assert (len(train), len(test)) == (3805, 761)
    assert set(train.labels.tolist()) == set(range(10))
    # real photographs: per-channel means near CIFAR-10's published ones
    means = train.images.float().mean((0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor(train.mean), atol=0.02)


class _RunsCode:
    """Unpickling this calls its __reduce__ callable: what a crafted batch file would do."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("payload", [
    lambda marker: _RunsCode(__import__("os").system, f"touch {marker}"),
    lambda marker: {b"data": _RunsCode(exec, f"open({str(marker)!r}, 'w').close()"), b"labels": []},
    lambda marker: {b"data": __import__("collections").OrderedDict(), b"labels": []},
], ids=["os.system", "exec inside the dict", "a harmless but foreign class"])
def test_a_crafted_batch_file_is_refused_without_running_code(tmp_path, payload):
    root = write_cifar10(tmp_path / "data", n_train=8, n_test=4, batches=1)
    marker = tmp_path / "ran"
    with open(root / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump(payload(marker), f)
    with pytest.raises(nas.InputError, match="not a CIFAR python batch file: it names .*refusing"):
        load_dataset("cifar10", root, train=True)
    assert not marker.exists()


def test_bytes_written_by_python3_at_protocol_2_still_load(tmp_path):
    root = write_cifar10(tmp_path / "data", n_train=8, n_test=4, batches=1)
    path = root / "cifar-10-batches-py" / "data_batch_1"
    entry = pickle.loads(path.read_bytes())
    path.write_bytes(pickle.dumps(entry, protocol=2))  # bytes become _codecs.encode calls
    assert len(load_dataset("cifar10", root, train=True)) == 8


# -- fetching CIFAR-10 when it is missing --------------------------------------------------------
@pytest.fixture
def cifar_server(tmp_path, monkeypatch):
    """A local web server offering a CIFAR-10 archive (a small one, with two members that try
    to write outside the dataset folder); CIFAR-10's URL and MD5 point at it."""
    import hashlib
    import http.server
    import io
    import tarfile
    import threading

    source = write_cifar10(tmp_path / "source", n_train=40, n_test=20)
    archive = tmp_path / "served" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        for name in ("../escaped", "cifar-10-batches-py/../../escaped"):
            info = tarfile.TarInfo(name)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(archive.parent), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setitem(nas.data.CIFAR["cifar10"], "url",
                        f"http://127.0.0.1:{server.server_address[1]}/{archive.name}")
    monkeypatch.setitem(nas.data.CIFAR["cifar10"], "md5", hashlib.md5(archive.read_bytes()).hexdigest())
    yield source
    server.shutdown()


def test_missing_cifar_is_fetched_into_data_with_a_progress_bar(tmp_path, cifar_server, capsys,
                                                                monkeypatch):
    from nas.cli import main
    from conftest import TINY_SEARCH
    import yaml
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "quick.yaml"  # as configs/quick.yaml: data in ./data, fetched if missing
    config.write_text(yaml.safe_dump({**TINY_SEARCH, "data": {**TINY_SEARCH["data"], "root": "data",
                                                              "download": True}}))
    assert main(["search", "--config", str(config), "--run-dir", "run", "--quiet",
                 "--set", "search.epochs=1"]) == 0
    err = capsys.readouterr().err
    assert "downloading CIFAR-10 into data" in err and "B/s" in err  # tqdm's bar
    folder = tmp_path / "data" / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        p.name for p in (cifar_server / "cifar-10-batches-py").iterdir())
    assert list((tmp_path / "data").iterdir()) == [folder]  # the archive is gone
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "data" / "escaped").exists()
    loaded = load_dataset("cifar10", tmp_path / "data", train=False)
    assert torch.equal(loaded.images, load_dataset("cifar10", cifar_server, train=False).images)
    # present now: a second run reads it and fetches nothing (the server could be gone)
    monkeypatch.setitem(nas.data.CIFAR["cifar10"], "url", "http://127.0.0.1:9/nothing.tar.gz")
    assert main(["search", "--config", str(config), "--run-dir", "run2", "--quiet",
                 "--set", "search.epochs=1"]) == 0


def test_without_a_network_one_line_names_data_dir(tmp_path, capsys, monkeypatch, cifar_root):
    from nas.cli import main
    monkeypatch.setitem(nas.data.CIFAR["cifar10"], "url", "http://127.0.0.1:9/cifar.tar.gz")
    monkeypatch.chdir(tmp_path)
    code = main(["search", "--config", str(Path(__file__).parents[1] / "configs" / "quick.yaml"),
                 "--run-dir", "run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("nas search: error: cannot download CIFAR-10 from http://127.0.0.1:9/")
    assert "without a network, pass --data-dir DIR, the directory that holds cifar-10-batches-py/" in err[0]
    assert list(tmp_path.iterdir()) == []  # no ./data, no run directory
    # the shared-data command keeps working: data found, nothing fetched
    assert load_dataset("cifar10", cifar_root, train=True, download=True).images.shape[0] == 96


def test_a_download_that_is_not_the_official_archive_is_refused(tmp_path, cifar_server, monkeypatch):
    monkeypatch.setitem(nas.data.CIFAR["cifar10"], "md5", "0" * 32)
    with pytest.raises(nas.InputError, match="is not the official CIFAR-10 archive .*nothing was kept"):
        load_dataset("cifar10", tmp_path / "data", train=True, download=True)
    assert not (tmp_path / "data").exists()
