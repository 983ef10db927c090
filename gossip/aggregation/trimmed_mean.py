"""``trimmed_mean`` (windowed): per element, drop the largest and smallest values, average the rest.

``⌊trim_ratio × rows⌋`` values are dropped at each end (at most ``(rows - 1) // 2``); the window
adds ``rows × mean``, which equals ``Σ rows`` when nothing is trimmed. Set
``trim_ratio ≥ attackers / n``. Loses honest signal on sparse updates (an element only one
sender touched is trimmed away) and adds up to a window of delay
(:mod:`gossip.aggregation.windowed`).
"""

from __future__ import annotations

import torch

from gossip.aggregation.windowed import Windowed


class TrimmedMean(Windowed):
    name = "trimmed_mean"

    def combine(self, rows: torch.Tensor, present: int, union: torch.Tensor) -> torch.Tensor:
        n = rows.shape[0]
        b = min(int(self.cfg.trim_ratio * n), (n - 1) // 2)
        self.stats["limited"] += 2 * b
        return rows.sort(dim=0).values[b:n - b].mean(dim=0) * n
