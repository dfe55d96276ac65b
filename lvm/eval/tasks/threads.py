"""`cpu_threads`: run torch on a given number of CPU threads for a while, then restore the setting."""

from __future__ import annotations


class cpu_threads:
    """Temporarily run torch on `n` CPU threads (0 = unchanged). Reusable: each `with` sets and restores.

    Decoding a small model token by token is a long chain of tiny ops: with several OpenMP threads every op
    ends in a barrier, and on a shared machine one descheduled thread stalls each of them, so one thread
    decodes far faster there.
    """

    def __init__(self, n: int):
        self.n, self.old = n, None

    def __enter__(self):
        import torch

        if self.n > 0 and self.n != torch.get_num_threads():
            self.old = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        if self.old is not None:
            torch.set_num_threads(self.old)
            self.old = None
