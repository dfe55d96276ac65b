"""data_builders: visual data -> visual sequences (lists of up to 16 images) -> webdataset shards.

Modules (import what you need; nothing heavy is imported here):
- `sequence`: the `Sequence` record (images + kind + source + metadata) and its shard sample layout
  (`{key}.0.png ... {key}.15.png` + `{key}.json`).
- `config`: `DataConfig` / `SourceConfig`, the per-unit RNG (`unit_rng`), `Skip`, `dist_env`.
- `build`: `build(cfg, workers, rank, world)` (stage 1, resumable, byte-deterministic per shard) and
  `prepare_build` (check inputs, save `data_config.yaml`).
- `stats`: `collect_stats(root)`, the totals of a built dataset, and `stats_report`.
- `sources`: one module per source type (builtin, images, class_groups, videos, multiview_mesh,
  multiview_folder, pairs, annotate, annotated_video, coco) and `make_source`, the type -> class table.
- `meshes`: GLB / glTF / OBJ meshes (trimesh) made ready for the renderer, textures baked in.
- `objects`: the catalog of built-in objects and their train / held-out split (`list_objects`,
  `get_object`, `MeshObject`) and colours (`object_color`, `random_color`); no renderer needed.
- `render`: the built-in pybullet TinyRenderer scenes (`render_orbit`, `render_video`, `render_object_view`,
  `task_pair`, `annotation_image`), callable from other packages.
- `annotations`: annotations drawn as images (segmentation palette, depth, normals, edges, colorization,
  inpainting, boxes, skeletons).
- `engines`: where shards run: `local` (this rank's share) or `ray` (tasks with retries, tokenizer actors);
  `run_build`, `run_tokenize`.
- `encode`: stage 2, image shards -> token shards (`tokenize`), and `export_jsonl`; `import_jsonl`: the
  release's token JSONL -> token shards.
- `shards`: the tar shard writer and the fixed token-shard format (reading: `lvm_base/tar.py`).
- `token_stream`: token shards streamed for training (`TokenStream`).
- `preview`: PNG grid of sample sequences.
"""
