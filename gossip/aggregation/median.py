"""``median`` (windowed): per element, the median of the window's rows (times the row count).

The mean of the two middle values for an even count. Like ``trimmed_mean`` it loses honest
signal on sparse updates and adds up to a window of delay (:mod:`gossip.aggregation.windowed`).
"""

from __future__ import annotations

import torch

from gossip.aggregation.windowed import Windowed, median_rows


class Median(Windowed):
    name = "median"

    def combine(self, rows: torch.Tensor, present: int, union: torch.Tensor) -> torch.Tensor:
        return median_rows(rows) * rows.shape[0]
