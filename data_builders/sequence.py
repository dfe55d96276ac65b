"""The visual sequence: up to 16 images that belong together, plus where they came from.

On disk (stage-1 image shards) a sequence is one webdataset sample: ``{key}.0.png``, ``{key}.1.png``, ...
(or ``.jpg``) in order, and ``{key}.json`` with its metadata:

    kind      single | class_group | video | multiview | pairs | tuples | annotated_video
    source    the source's name (config `sources[i].name`)
    n_images  number of frames in the sample
    seed      the per-sequence seed it was drawn with (from the dataset seed, source name and unit index)
    ... kind-specific provenance: paths, frames / stride, azimuths / elevation / radius, task(s), layout.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # PIL is imported where images are handled: the token contract (lvm.tokens) needs none
    from PIL import Image

KINDS = ("single", "class_group", "video", "multiview", "pairs", "tuples", "annotated_video")
MAX_IMAGES = 16


@dataclass
class Sequence:
    images: list[Image.Image]
    kind: str
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown sequence kind {self.kind!r}; expected one of {KINDS}")
        if not 1 <= len(self.images) <= MAX_IMAGES:
            raise ValueError(f"a visual sequence has 1..{MAX_IMAGES} images, got {len(self.images)}")

    def metadata(self) -> dict:
        return {**self.meta, "kind": self.kind, "source": self.source, "n_images": len(self.images)}

    def to_sample(self, key: str, image_format: str = "png") -> dict:
        """The webdataset sample of this sequence (frames encoded as PNG or JPEG, deterministic bytes)."""
        sample = {"__key__": key}
        ext = "jpg" if image_format in ("jpg", "jpeg") else "png"
        for i, img in enumerate(self.images):
            sample[f"{i}.{ext}"] = encode_image(img, ext)
        sample["json"] = json.dumps({**self.metadata(), "key": key}, sort_keys=True).encode("utf-8")
        return sample


def encode_image(img: Image.Image, ext: str = "png") -> bytes:
    buf = io.BytesIO()
    if ext == "png":
        img.convert("RGB").save(buf, format="PNG", compress_level=6)
    else:
        img.convert("RGB").save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def frame_names(sample: dict) -> list[str]:
    """The image members of an image-shard sample, in sequence order (0, 1, ..., 15)."""
    names = [k for k in sample if k != "__key__" and k.split(".")[0].isdigit() and "." in k]
    return sorted(names, key=lambda k: int(k.split(".")[0]))


def sample_images(sample: dict) -> list[Image.Image]:
    from PIL import Image

    out = []
    for name in frame_names(sample):
        with Image.open(io.BytesIO(sample[name])) as im:
            out.append(im.convert("RGB"))
    return out


def sample_meta(sample: dict) -> dict:
    return json.loads(sample["json"]) if "json" in sample else {}
