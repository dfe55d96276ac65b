"""data_builders: visual data -> visual sequences (lists of up to 16 images) -> webdataset shards.

Modules (import what you need; nothing heavy is imported here):
- `sequence`: the `Sequence` record (images + kind + source + metadata) and its shard sample layout
  (`{key}.0.png ... {key}.15.png` + `{key}.json`).
- `build`: `DataConfig` / `SourceConfig`, `build(cfg, workers, rank, world)` (stage 1, resumable,
  byte-deterministic per shard), `collect_stats(root)`.
- `sources`: every source type (builtin, images, class_groups, videos, multiview_mesh, multiview_folder,
  pairs, annotate, annotated_video).
- `render`: the built-in pybullet TinyRenderer scenes (`list_objects`, `render_orbit`, `render_video`,
  `render_object_view`, `task_pair`, `annotation_image`), callable from other packages.
- `annotations`: annotations drawn as images (segmentation palette, depth, normals, edges, colorization,
  inpainting, boxes, skeletons).
- `tokenize`: stage 2, image shards -> token shards (`tokenize`), and `export_jsonl`.
- `shards`: the tar shard writer/reader and the fixed token-shard format.
- `preview`: PNG grid of sample sequences.
"""
