"""The `images` source: one image per sequence from a folder, a .txt list of paths, or image shards.

Image shards (.tar: img2dataset's webdataset output, `{key}.jpg` + `.txt` + `.json`, or stage-1 shards) are
read member by member: `plan()` indexes each tar's headers once and makes one unit per image member (the
tar, the member's name, data offset and size), so `make()` reads just that member's bytes, memory does not
grow with the tar, and each unit makes at most one sequence. Captions, JSON and other members are ignored.
"""

from __future__ import annotations

import io
from itertools import groupby
from pathlib import Path

from PIL import Image

from lvm_base.errors import InputError
from lvm_base.image_io import resize_square, to_rgb
from lvm_base.tar import index_tar, list_shards, read_list_file, read_tar_member, split_key

from ..config import Skip
from .base import Source, images_in, input_dir, load_square

# Members of a shard sample without numbered frames that count as images.
SHARD_IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp")


class ImagesSource(Source):
    """One image per sequence from a folder (recursive), a .txt list of paths, or image shards (.tar)."""

    def plan(self):
        p = Path(self.cfg.path)
        if p.suffix.lower() == ".parquet":
            raise InputError(f"{p}: a parquet URL list is img2dataset's input, not images; run img2dataset on it "
                             "first (--input_format parquet --output_format webdataset) and set `path` to its "
                             "output folder of .tar shards")
        if p.is_file() and p.suffix == ".txt":
            lines = read_list_file(p, "image list")
            if not lines:
                raise InputError(f"{p}: empty image list")
            return [("file", str((p.parent / ln) if not Path(ln).is_absolute() else ln)) for ln in lines]
        if p.suffix == ".tar" or (p.is_dir() and any(p.glob("*.tar"))):
            return self._tar_units(list_shards(p))
        return [("file", str(x)) for x in images_in(input_dir(self.cfg.path, "images"), "images")]

    def _tar_units(self, tars: list[Path]) -> list:
        """("member", tar, name, offset, size) per image member; a tar with a bad header is an InputError when
        it is the only one, else its readable members plus one ("bad_tar", tar, why) unit, counted as skipped."""
        units, problems = [], []
        for tar in tars:
            idx = index_tar(tar)
            if idx.error and len(tars) == 1:
                raise InputError(f"{tar}: corrupt tar shard: {idx.error}")
            units += [("member", str(tar), *m) for m in image_members(idx.members)]
            if idx.error:
                units.append(("bad_tar", str(tar), idx.error))
                problems.append(f"{tar}: {idx.error}")
            if self.data.limit and len(units) >= self.data.limit:
                break  # the build takes only the first `limit` units: the other tars need no scan
        if not any(u[0] == "member" for u in units):
            raise InputError(f"{self.cfg.path}: no image members in {len(tars)} tar shard(s)"
                             + (f" (first problem: {problems[0]})" if problems else ""))
        return units

    def make(self, unit, rng, seed):
        how, path = unit[:2]
        if how == "file":
            return [self.seq([load_square(path, self.size)], "single", paths=[path])]
        if how == "bad_tar":
            return [Skip("shard_corrupt", f"{path}: {unit[2]}; the rest of this tar is skipped")]
        _, _, name, offset, size = unit
        item = f"{path}:{name}"
        try:
            data = read_tar_member(path, offset, size)
        except InputError:
            return [Skip("shard_unreadable", item)]
        if len(data) < size:
            return [Skip("image_truncated", item)]
        return [self._shard_image(data, item)]

    def _shard_image(self, data: bytes, item: str):
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                img = resize_square(to_rgb(im), self.size)
            return self.seq([img], "single", paths=[item])
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            return Skip("image_truncated" if "truncated" in str(e) else "image_corrupt", item)


def image_members(members: list) -> list:
    """The (name, offset, size) members that become images, in file order per sample (members sharing a key):
    its numbered frames (`{key}.0.png`, `{key}.1.png` ...: stage-1 shards) in frame order, else every image
    member (`{key}.jpg`: img2dataset). Names without a dot and hidden files (`._x.jpg`) are not samples."""
    out = []
    for key, group in groupby(members, key=lambda m: (split_key(m[0]) or ("",))[0]):
        if key == "" or key.endswith("/"):
            continue
        imgs = [(split_key(m[0])[1], m) for m in group]
        imgs = [(ext, m) for ext, m in imgs if ext.rsplit(".", 1)[-1].lower() in SHARD_IMAGE_EXTENSIONS]
        frames = [(ext, m) for ext, m in imgs if "." in ext and ext.split(".")[0].isdigit()]
        chosen = sorted(frames, key=lambda x: int(x[0].split(".")[0])) if frames else imgs
        out += [m for _, m in chosen]
    return out
