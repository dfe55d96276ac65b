"""CUDA graph capture of the engine's graph-safe forward pass, once per (rows, tokens per row, cache span)."""

from __future__ import annotations

import sys

import torch


def capture_step(engine, tokens: torch.Tensor, pos: torch.Tensor, span: int):
    """Capture the static pass for tokens (B, Q) at positions `pos` (B, Q) with this span (warm-up on a side
    stream, then capture); None, and eager passes from now on, if capture fails. The warm-up runs the real
    pass, which the replay repeats exactly (same inputs, same cache writes)."""
    tok, p = tokens.clone(), pos.clone(memory_format=torch.contiguous_format)
    try:
        if engine._pool is None:
            engine._pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(engine.device)
        side.wait_stream(torch.cuda.current_stream(engine.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                engine._step_static(tok, p, span)
        torch.cuda.current_stream(engine.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=engine._pool):
            out = engine._step_static(tok, p, span)
    except Exception as e:  # an op that cannot be captured on this build: eager steps, same results
        engine.cuda_graphs = False
        note = f"CUDA graph capture failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); " \
               "decoding with eager steps"
        engine.notes.append(note)
        print(f"note: {note}", file=sys.stderr, flush=True)
        return None
    engine._graphs[(*tokens.shape, span)] = entry = (graph, tok, p, out)
    return entry
