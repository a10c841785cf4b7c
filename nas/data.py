"""Datasets and batches: CIFAR-10/100 and image folders, held as uint8 tensors.

Every dataset loads into one ``ImageSet`` (uint8 images ``[N, 3, S, S]`` and int64 labels),
resized once to the configured size. Batches are augmented as whole batches (4-pixel pad and
random crop, horizontal flip, normalisation, optional cutout) either on the training device
(``on_device``: no worker processes, no host-to-device copies) or in DataLoader workers.
The randomness of an epoch is a function of (seed, epoch) alone, so a resumed run sees the same
batches as one run straight through.
"""
from __future__ import annotations

import numbers
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import distributed as dist
from .errors import InputError
from .files import atomic_write
from .registry import DATASETS

if TYPE_CHECKING:
    from .config import DataConfig


@dataclass
class ImageSet:
    """Images as uint8 ``[N, 3, H, W]``, labels as int64 ``[N]``, and per-channel statistics."""

    images: Tensor
    labels: Tensor
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, indices: Tensor) -> "ImageSet":
        """The images at ``indices``."""
        return ImageSet(self.images[indices], self.labels[indices], self.num_classes, self.mean,
                        self.std)


# -- CIFAR --------------------------------------------------------------------------------------
CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], label_key=b"labels", classes=10,
                    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
                    title="CIFAR-10", url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    md5="c58f30108f718f92721af3b95e74349a"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"],
                     label_key=b"fine_labels", classes=100,
                     mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
                     title="CIFAR-100", url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                     md5="eb9058c3a382ffc7106e4002c42a8d85"),
}


# What CIFAR pickles may name: numpy's array and dtype rebuilders, and _codecs.encode (how
# Python 3 writes bytes at protocol 2), nothing else.
# A downloaded batch file is data: a pickle naming any other callable could run code when read.
_CIFAR_GLOBALS = {(module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
                  for name in ("_reconstruct", "scalar")} | {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles plain containers, bytes, str, numbers and numpy arrays; refuses anything else."""

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch file "
                                         "never does; refusing to load it")
        return super().find_class(module, name)


def _read_batch(path: Path, label_key: bytes, classes: int) -> tuple[Tensor, Tensor]:
    try:
        with open(path, "rb") as f:
            entry = _CifarUnpickler(f, encoding="bytes").load()
    except pickle.UnpicklingError as exc:
        raise InputError(f"{path} is not a CIFAR python batch file: {exc}") from None
    except OSError as exc:  # no permission, a directory, ...
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except Exception as exc:
        raise InputError(f"{path} is not a CIFAR python batch file ({type(exc).__name__})") from None
    if not isinstance(entry, dict):
        raise InputError(f"{path} is not a CIFAR python batch file (not a dict)")
    entry = {k.encode() if isinstance(k, str) else k: v for k, v in entry.items()}
    if b"data" not in entry or label_key not in entry:
        raise InputError(f"{path} is not a CIFAR python batch file (needs the keys 'data' and "
                         f"'{label_key.decode()}')")
    try:
        data = torch.as_tensor(entry[b"data"])
        raw = list(entry[label_key])
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in raw):
            raise TypeError
        labels = torch.as_tensor(raw, dtype=torch.int64)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise InputError(f"{path}: 'data' must be a uint8 array and '{label_key.decode()}' a list "
                         "of integer class indices") from None
    if data.dtype != torch.uint8 or data.dim() != 2 or data.shape[1] != 3072:
        raise InputError(f"{path}: 'data' must be uint8 rows of 3072 values (32x32x3), got "
                         f"{data.dtype} of shape {tuple(data.shape)}")
    if labels.shape[0] != data.shape[0]:
        raise InputError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.numel() and (labels.min() < 0 or labels.max() >= classes):
        raise InputError(f"{path}: labels must lie in [0, {classes - 1}]")
    return data.view(-1, 3, 32, 32), labels


def _cifar_dir(root: Path, folder: str) -> Path:
    return root if root.name == folder else root / folder


def load_cifar(name: str, root: str | Path, train: bool, download: bool = False) -> ImageSet:
    """Read CIFAR from a directory in the official python format; any subset of it is fine."""
    spec = CIFAR[name]
    root = Path(root).expanduser()
    directory = _cifar_dir(root, spec["folder"])
    wanted = spec["train"] if train else spec["test"]
    present = [directory / f for f in wanted if (directory / f).is_file()]
    if not present and download:
        target = root.parent if root.name == spec["folder"] else root
        download_cifar(name, target)
        directory = target / spec["folder"]
        present = [directory / f for f in wanted if (directory / f).is_file()]
    if not present:
        hint = "set data.download: true, or point --data-dir at the directory that holds " \
               f"{spec['folder']}/"
        raise InputError(f"{spec['title']} not found: no {' / '.join(wanted)} in {directory}; "
                         f"{hint}")
    parts = [_read_batch(p, spec["label_key"], spec["classes"]) for p in present]
    images = torch.cat([p[0] for p in parts])
    if images.shape[0] == 0:
        raise InputError(f"{directory}: the {spec['title']} files hold no images")
    return ImageSet(images, torch.cat([p[1] for p in parts]), spec["classes"], spec["mean"],
                    spec["std"])


def download_cifar(name: str, target: Path) -> None:
    """Fetch the official CIFAR archive into ``target`` with a progress bar, check its MD5 and
    unpack its batch files into ``target/<folder>/``; without a network, one line naming --data-dir.

    Only the archive's regular files directly inside the dataset folder are written (each to a
    temporary name, then renamed), so a crafted archive cannot write elsewhere and an interrupted
    download leaves no batch file half-written. The archive is deleted once unpacked.
    """
    import hashlib
    import os
    import tarfile
    import urllib.error
    import urllib.request
    from pathlib import PurePosixPath

    from tqdm import tqdm

    spec = CIFAR[name]
    title, folder, url = spec["title"], spec["folder"], spec["url"]
    created = not target.exists()
    archive = target / f"{folder}.tar.gz.{os.getpid()}.part"
    try:
        target.mkdir(parents=True, exist_ok=True)
        digest = hashlib.md5()
        with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as f, \
                tqdm(total=response.length, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=f"downloading {title} into {target}") as bar:
            while chunk := response.read(1 << 16):
                f.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
        if digest.hexdigest() != spec["md5"]:
            raise InputError(f"the file downloaded from {url} is not the official {title} archive "
                             f"(MD5 {digest.hexdigest()}, expected {spec['md5']}); nothing was kept")
        (target / folder).mkdir(exist_ok=True)
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) != 2 or parts[0] != folder or parts[1] in ("..", "."):
                    continue
                atomic_write(target / folder / parts[1], tar.extractfile(member).read(),
                             per_process=True)  # another process may extract it too
    except (urllib.error.URLError, OSError, EOFError, tarfile.TarError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        raise InputError(f"cannot download {title} from {url} into {target} ({reason}); without a "
                         f"network, pass --data-dir DIR, the directory that holds {folder}/ "
                         "(copied from a machine that has it)") from None
    finally:
        archive.unlink(missing_ok=True)
        if created and target.is_dir() and not any(target.iterdir()):
            target.rmdir()  # a failed download leaves no empty directory behind


def known_classes(dataset: str) -> int:
    """How many classes ``dataset`` has, known without loading it: the built-in CIFARs' count,
    else 10 (where only the network's shape is wanted, as by ``nas profile`` or a cost line)."""
    return CIFAR[dataset]["classes"] if dataset in CIFAR else 10


@DATASETS.register("cifar10")
def cifar10(root: str | Path, train: bool, download: bool = False) -> ImageSet:
    """CIFAR-10 from ``root/cifar-10-batches-py`` (official python format)."""
    return load_cifar("cifar10", root, train, download)


@DATASETS.register("cifar100")
def cifar100(root: str | Path, train: bool, download: bool = False) -> ImageSet:
    """CIFAR-100 from ``root/cifar-100-python`` (official python format)."""
    return load_cifar("cifar100", root, train, download)


# -- image folders ------------------------------------------------------------------------------
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@DATASETS.register("imagefolder")
def image_folder(root: str | Path, train: bool, download: bool = False,
                 image_size: int = 32) -> ImageSet:
    """Users' images: ``root/train/<class>/*.png`` and ``root/test/<class>/*`` (or ``val``)."""
    from PIL import Image
    from tqdm import tqdm

    root = Path(root).expanduser()
    split = "train" if train else next((s for s in ("test", "val") if (root / s).is_dir()), "test")
    directory = root / split
    if not directory.is_dir():
        raise InputError(f"image folder not found: {directory} (expected {root}/train/<class>/ "
                         f"and {root}/test/<class>/ with images inside)")
    classes = sorted(d.name for d in directory.iterdir() if d.is_dir())
    if not classes:
        raise InputError(f"{directory} has no class folders (expected {directory}/<class>/*.png)")
    files, labels = [], []
    for label, cls in enumerate(classes):
        found = sorted(p for p in (directory / cls).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise InputError(f"class folder {directory / cls} holds no images "
                             f"({', '.join(IMAGE_EXTENSIONS)})")
        files += found
        labels += [label] * len(found)
    images = torch.empty(len(files), 3, image_size, image_size, dtype=torch.uint8)
    for i, path in enumerate(tqdm(files, desc=f"loading {directory}", unit="img",
                                  disable=len(files) < 2000, leave=False)):
        try:
            with Image.open(path) as img:
                img = img.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                images[i] = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8) \
                    .view(image_size, image_size, 3).permute(2, 0, 1)
        except Image.DecompressionBombError as exc:  # a small file that decodes to gigabytes
            raise InputError(f"refusing to read image {path}: {exc}") from None
        except OSError as exc:
            raise InputError(f"cannot read image {path}: {exc.strerror or exc}") from None
    flat = images.float().div_(255).transpose(0, 1).reshape(3, -1)
    mean = tuple(flat.mean(1).tolist())
    std = tuple(flat.std(1).clamp_min(1e-3).tolist())
    return ImageSet(images, torch.tensor(labels), len(classes), mean, std)


def load_dataset(name: str, root: str | Path, train: bool, download: bool = False,
                 image_size: int = 32) -> ImageSet:
    """Load a registered dataset and resize its images to ``image_size`` (once)."""
    factory = DATASETS.get(name)
    try:
        if factory is image_folder:
            data = factory(root, train, download, image_size=image_size)
        else:
            data = factory(root, train, download)
    except OSError as exc:  # a name too long, a symlink loop, no permission to look
        where = f" {exc.filename}" if getattr(exc, "filename", None) else f" in {root}"
        raise InputError(f"cannot read the {name} data{where}: {exc.strerror or exc}") from None
    if not isinstance(data, ImageSet):
        raise InputError(f"dataset '{name}' returned {type(data).__name__}, not an ImageSet")
    if data.images.shape[-1] != image_size or data.images.shape[-2] != image_size:
        data.images = resize(data.images, image_size)
    return data


def load_split(cfg: "DataConfig", train: bool) -> ImageSet:
    """The training or test split that a config's ``data:`` section names, cut to its limit."""
    def load(download: bool) -> ImageSet:
        return load_dataset(cfg.dataset, cfg.root, train=train, download=download,
                            image_size=cfg.image_size)

    # under torchrun rank 0 downloads alone and the others wait for it
    data = dist.main_first(load) if cfg.download else load(False)
    limit = cfg.limit if train else cfg.test_limit
    if limit is not None and limit < len(data):
        data = data.subset(torch.arange(limit))
    return data


def resize(images: Tensor, size: int) -> Tensor:
    """Resize uint8 images (antialiased bilinear), in chunks to bound memory."""
    out = torch.empty(images.shape[0], 3, size, size, dtype=torch.uint8)
    for start in range(0, images.shape[0], 4096):
        chunk = images[start:start + 4096].float()
        chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False)
        out[start:start + 4096] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def split_indices(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Two disjoint index sets of sizes ``round(n*fraction)`` and the rest, fixed by ``seed``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = min(max(int(round(n * fraction)), 1), n - 1)
    return perm[:k].sort().values, perm[k:].sort().values


def steps_per_epoch(weight_images: int, arch_images: int, batch_size: int, cap: int | None) -> int:
    """A search epoch's steps: one per full batch of the smaller split (at least one), at most
    ``cap`` (search.steps_per_epoch) when it is set."""
    steps = min(weight_images, arch_images) // batch_size or 1
    return min(steps, cap) if cap else steps


# -- augmentation -------------------------------------------------------------------------------
def augment(images: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor, *, pad: int = 0,
            flip: bool = False, cutout: int = 0, generator: torch.Generator | None = None,
            part: tuple[int, int] | None = None) -> Tensor:
    """uint8 ``[B, 3, H, W]`` -> normalised float batch with random crop, flip and cutout.

    ``part=(start, total)``: the images are rows ``start:start+B`` of a batch of ``total``; the
    randomness of the whole batch is drawn and their rows kept, so a rank's slice of a global
    batch is augmented exactly as in a one-process run.
    """
    B, _, H, W = images.shape
    device = images.device
    start, total = part or (0, B)

    def draw(fn, *args) -> Tensor:  # this slice's rows of a draw for the whole batch
        return fn(*args, device=device, generator=generator)[start:start + B]
    x = images.float().div_(255)
    if pad > 0:
        Hp, Wp = H + 2 * pad, W + 2 * pad
        padded = F.pad(x, (pad, pad, pad, pad)).reshape(B, 3, Hp * Wp)
        oy = draw(torch.randint, 0, 2 * pad + 1, (total, 1, 1))
        ox = draw(torch.randint, 0, 2 * pad + 1, (total, 1, 1))
        # flat index of each output pixel in the padded image, one crop offset per sample
        idx = (oy * Wp + ox + torch.arange(H, device=device).view(1, H, 1) * Wp
               + torch.arange(W, device=device).view(1, 1, W)).view(B, 1, H * W)
        x = padded.gather(2, idx.expand(B, 3, H * W)).view(B, 3, H, W)
    if flip:
        flips = draw(torch.rand, total) < 0.5
        x = torch.where(flips.view(B, 1, 1, 1), x.flip(-1), x)
    # (a pageable host-to-device copy would wait for the GPU: pass device tensors to avoid it)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    x = (x - mean_t) / std_t
    if cutout > 0:
        cy = draw(torch.randint, 0, H, (total, 1, 1))
        cx = draw(torch.randint, 0, W, (total, 1, 1))
        ys = torch.arange(H, device=device).view(1, H, 1)
        xs = torch.arange(W, device=device).view(1, 1, W)
        top, left = cy - cutout // 2, cx - cutout // 2
        hole = (ys >= top) & (ys < top + cutout) & (xs >= left) & (xs < left + cutout)
        x = x.masked_fill(hole.unsqueeze(1), 0.0)
    return x


# -- batches ------------------------------------------------------------------------------------
def seed_of(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (Python hashes int tuples the same every run)."""
    return hash(tuple(int(p) for p in parts)) % (2 ** 63)


class _EpochBatches(torch.utils.data.Dataset):
    """One epoch's batches as items, so DataLoader workers augment whole batches."""

    def __init__(self, loader: "Batches", order: list[Tensor], epoch_seed: int) -> None:
        self.loader, self.order, self.epoch_seed = loader, order, epoch_seed

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(seed_of(self.epoch_seed, i))
        return self.loader.make_batch(self.order[i], gen)


class Batches:
    """Shuffled, augmented batches of an ``ImageSet``, one epoch per iteration.

    ``on_device=True`` moves the uint8 images to ``device`` once and augments each batch there;
    otherwise ``workers`` DataLoader processes augment batches on the CPU. ``None`` chooses the
    device path on CUDA only. Call
    ``set_epoch(epoch)`` before iterating: the order and augmentation depend on (seed, epoch).

    ``shard=(rank, world)`` splits the data over ``world`` processes. In training
    ``batch_size`` is the global batch: every rank yields its slice of the batch a one-process
    run would see, augmented the same way. In evaluation a rank takes every world-th image.
    """

    def __init__(self, data: ImageSet, batch_size: int, *, train: bool, device: torch.device,
                 on_device: bool | None = None, workers: int = 0, pad: int = 4, cutout: int = 0,
                 seed: int = 0, max_steps: int | None = None,
                 shard: tuple[int, int] = (0, 1)) -> None:
        if len(data) == 0:
            raise InputError("no images to make batches from")
        self.device, self.workers = torch.device(device), workers
        self.on_device = on_device = self.device.type == "cuda" if on_device is None else on_device
        self.images = data.images.to(self.device) if on_device else data.images
        self.labels = data.labels.to(self.device) if on_device else data.labels
        where = self.device if on_device else torch.device("cpu")
        self.mean = torch.tensor(data.mean, dtype=torch.float32, device=where)
        self.std = torch.tensor(data.std, dtype=torch.float32, device=where)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.pad, self.cutout = (pad, cutout) if train else (0, 0)
        self.max_steps = max_steps
        self.epoch = 0
        self.rank, self.world = shard
        n = len(data) if train else len(range(self.rank, len(data), self.world))
        # Training drops a last partial batch, unless it is the only one.
        full = n // batch_size if train and n >= batch_size else -(-n // batch_size)
        self.steps = min(full, max_steps) if max_steps else full

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order and augmentation the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps

    def make_batch(self, idx: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Gather and augment the images at ``idx`` (this rank's slice of them in training)."""
        part = None
        if self.train and self.world > 1:
            b = idx.shape[0] // self.world
            part = (self.rank * b, idx.shape[0])
            idx = idx[part[0]:part[0] + b]
        images, labels = self.images[idx], self.labels[idx]
        x = augment(images, self.mean, self.std, pad=self.pad, flip=self.train,
                    cutout=self.cutout, generator=generator, part=part)
        return x, labels

    def _order(self) -> Tensor:
        n = self.labels.shape[0]
        if self.train:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(
                seed_of(self.seed, self.epoch, 1)))
        else:
            perm = torch.arange(self.rank, n, self.world)
        return perm[:self.steps * self.batch_size]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = self._order()
        epoch_seed = seed_of(self.seed, self.epoch, 2)
        if self.on_device:
            # one host-to-device copy of the epoch's order, not one per batch
            gen = torch.Generator(device=self.device).manual_seed(epoch_seed)
            for idx in order.to(self.device).split(self.batch_size):
                yield self.make_batch(idx, gen)
            return
        loader = torch.utils.data.DataLoader(
            _EpochBatches(self, list(order.split(self.batch_size)), epoch_seed), batch_size=None,
            shuffle=False, num_workers=self.workers, pin_memory=self.device.type == "cuda")
        for x, y in loader:
            yield (x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True))
