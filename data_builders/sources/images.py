"""The `images` source: one image per sequence from a folder, a .txt list of paths, or image shards."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from tokenizer.common.errors import InputError
from tokenizer.image_io import resize_square, to_rgb

from ..config import Skip
from ..sequence import frame_names
from tokenizer.tar import iter_tar_samples, list_shards
from .base import Source, images_in, input_dir, load_square

# Members of a shard sample without numbered frames that count as images.
SHARD_IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp")


class ImagesSource(Source):
    """One image per sequence from a folder (recursive), a .txt list of paths, or image shards (.tar)."""

    def plan(self):
        p = Path(self.cfg.path)
        if p.is_file() and p.suffix == ".txt":
            lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
            if not lines:
                raise InputError(f"{p}: empty image list")
            return [("file", str((p.parent / ln) if not Path(ln).is_absolute() else ln)) for ln in lines]
        if p.suffix == ".tar" or (p.is_dir() and any(p.glob("*.tar"))):
            return [("shard", str(s)) for s in list_shards(p)]
        return [("file", str(x)) for x in images_in(input_dir(self.cfg.path, "images"), "images")]

    def make(self, unit, rng, seed):
        how, path = unit
        if how == "file":
            return [self.seq([load_square(path, self.size)], "single", paths=[path])]
        out = []
        try:
            for sample in iter_tar_samples(path):
                names = frame_names(sample) or [k for k in sample if k.split(".")[-1] in SHARD_IMAGE_EXTENSIONS]
                out += [self._shard_image(sample[nm], f"{path}:{sample['__key__']}.{nm}") for nm in names]
        except InputError:
            out.append(Skip("shard_corrupt", path))
        return out

    def _shard_image(self, data: bytes, item: str):
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                img = resize_square(to_rgb(im), self.size)
            return self.seq([img], "single", paths=[item])
        except (OSError, ValueError, SyntaxError) as e:
            return Skip("image_truncated" if "truncated" in str(e) else "image_corrupt", item)
