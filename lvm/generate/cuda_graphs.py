"""CUDA graph capture of the engine's graph-safe decoding step, once per (batch size, cache span)."""

from __future__ import annotations

import sys

import torch


def capture_step(engine, tokens: torch.Tensor, pos: int, span: int):
    """Capture the static step for this batch size and span (warm-up on a side stream, then capture);
    None, and eager steps from now on, if capture fails. The warm-up runs the real step at `pos`, which
    the replay repeats exactly (same inputs, same cache writes)."""
    tok, p = tokens.clone(), torch.full((1,), pos, dtype=torch.long, device=engine.device)
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
    engine._graphs[(tokens.shape[0], span)] = entry = (graph, tok, p, out)
    return entry
