"""Image datasets for tokenizer training and evaluation.

`path` may be:
- a folder: every image under it, recursively;
- a list file (.txt/.lst): one image path per line (relative paths resolve against the file's folder);
- webdataset image shards: a .tar file, a glob (`shards/*.tar`) or a brace range (`train-{000..009}.tar`)
  (read by `lvm_base/tar.py`).
  Every member with an image extension is one image (a visual-sequence sample may hold several).

Unreadable images are skipped and counted, never fatal: a dataset item is `None` then, and `collate`
drops it and reports how many it dropped.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import torch
from torch.utils.data import Dataset, IterableDataset, Sampler, get_worker_info

from lvm_base.errors import ImageLoadError, InputError
from lvm_base.image_io import IMAGE_EXTENSIONS, list_images, load_image_tensor, pil_to_tensor, resize_square, to_rgb
from lvm_base.tar import is_shard_spec, iter_tar_members, list_shards, read_list_file


def shard_list(spec: str) -> list[str] | None:
    """The tar shards named by `spec`, or None when `spec` does not name shards."""
    if not is_shard_spec(spec):
        return None
    return [str(p) for p in list_shards(spec)]


def image_paths(spec: str | Path) -> list[Path]:
    p = Path(spec)
    if p.is_dir():
        files = list_images(p)
    elif p.is_file() and p.suffix.lower() in (".txt", ".lst", ".list"):
        files = [q if q.is_absolute() else p.parent / q for q in map(Path, read_list_file(p, "image list"))]
    elif p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
        files = [p]
    else:
        raise InputError(f"{spec}: not an image folder, list file (.txt) or .tar shard spec")
    if not files:
        raise InputError(f"{spec}: no images found")
    return files


class ImageFiles(Dataset):
    def __init__(self, paths, size: int, value_range, resize_mode="crop", random_flip=False):
        self.paths, self.size, self.value_range = list(paths), size, tuple(value_range)
        self.resize_mode, self.random_flip = resize_mode, random_flip

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            x = load_image_tensor(self.paths[i], self.size, self.value_range, self.resize_mode)
        except ImageLoadError:
            return None
        if self.random_flip and random.random() < 0.5:
            x = x.flip(-1)
        return x


class ImageShards(IterableDataset):
    """Images inside webdataset tar shards, split over DDP ranks and DataLoader workers by shard."""

    def __init__(self, shards, size: int, value_range, resize_mode="crop", random_flip=False,
                 rank: int = 0, world_size: int = 1, seed: int = 0, shuffle_buffer: int = 256, loop=True):
        self.shards, self.size, self.value_range = list(shards), size, tuple(value_range)
        self.resize_mode, self.random_flip = resize_mode, random_flip
        self.rank, self.world_size, self.seed, self.buffer, self.loop = rank, world_size, seed, shuffle_buffer, loop
        self.epoch = 0

    def _decode(self, name, data):
        from PIL import Image, ImageOps

        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                img = to_rgb(ImageOps.exif_transpose(img))
        except Exception:
            return None
        x = pil_to_tensor(resize_square(img, self.size, self.resize_mode), self.value_range)
        if self.random_flip and random.random() < 0.5:
            x = x.flip(-1)
        return x

    def _members(self, shards):
        for shard in shards:
            try:
                for name, data in iter_tar_members(shard):
                    if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                        yield name, data
            except InputError:
                yield shard, b""  # a broken shard counts as one skipped item

    def __iter__(self):
        wi = get_worker_info()
        wid, nw = (wi.id, wi.num_workers) if wi else (0, 1)
        parts = self.world_size * nw
        mine = self.shards[self.rank * nw + wid::parts] or self.shards[(self.rank * nw + wid) % len(self.shards)::len(self.shards)]
        rng = random.Random(self.seed * 1000003 + self.rank * 1009 + wid)
        while True:
            order = list(mine)
            rng.shuffle(order)
            buf = []
            for name, data in self._members(order):
                buf.append(self._decode(name, data))
                if len(buf) >= self.buffer:
                    yield buf.pop(rng.randrange(len(buf)))
            rng.shuffle(buf)
            yield from buf
            if not self.loop:
                return


class EpochSampler(Sampler):
    """Shuffled indices, a fresh permutation per epoch from (seed, epoch), startable mid-epoch (for --resume).

    Over `world_size` ranks the permutation is cut into blocks of `batch_size`: rank r takes blocks r, r+W,
    r+2W, ... and every rank gets the same number of them (an incomplete last round is dropped). So at each
    step the ranks' batches together are one contiguous stretch of the permutation, the same micro-batches
    in the same order that one process with grad_accum=W takes, and all ranks are always at the same epoch
    and position (a rank with more batches per epoch than another would drift into the next epoch early).
    With one rank this is the permutation itself, cut into whole batches.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, batch_size: int = 1):
        self.n, self.seed, self.rank, self.world_size, self.batch_size = n, seed, rank, world_size, batch_size
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start: int):
        """Continue at `epoch` after this rank's first `start` samples of it."""
        self.epoch, self.start = epoch, start

    def _mine(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        b, w = self.batch_size, self.world_size
        return [i for k in range(self.n // (b * w)) for i in perm[(k * w + self.rank) * b:(k * w + self.rank + 1) * b]]

    def __iter__(self):
        return iter(self._mine()[self.start:])

    def __len__(self):
        return max(0, (self.n // (self.batch_size * self.world_size)) * self.batch_size - self.start)


def collate(items):
    """Stack the readable images; return (batch or None, number skipped)."""
    good = [x for x in items if x is not None]
    return (torch.stack(good) if good else None), len(items) - len(good)


def build_dataset(spec, size, value_range, resize_mode="crop", random_flip=False, rank=0, world_size=1,
                  seed=0, loop=True):
    shards = shard_list(str(spec))
    if shards is not None:
        return ImageShards(shards, size, value_range, resize_mode, random_flip, rank, world_size, seed, loop=loop)
    return ImageFiles(image_paths(spec), size, value_range, resize_mode, random_flip)
