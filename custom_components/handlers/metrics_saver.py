"""Metric reports whose per-class columns carry the class names.

MONAI's ``write_metrics_reports`` takes ``class_labels`` for the column names, but ``MetricsSaver`` does not pass
them on, so every report reads ``class0, class1, ...`` and a person has to look the order up elsewhere.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine
from monai.handlers import MetricsSaver as MonaiMetricsSaver
from monai.handlers.utils import write_metrics_reports
from monai.utils import string_list_all_gather

__all__ = ["MetricsSaver"]


class MetricsSaver(MonaiMetricsSaver):
    """``monai.handlers.MetricsSaver`` that names the per-class columns of ``<metric>_raw.csv`` and the rows of
    ``<metric>_summary.csv`` after ``class_names`` (``filename,spleen,right kidney,...,mean``).

    Args:
        save_dir: as MONAI's ``MetricsSaver``.
        class_names: the name of each scored channel, in order (e.g. the organs without the background when the
            metrics exclude it); None keeps ``class0, class1, ...``.
        kwargs: the other arguments of MONAI's ``MetricsSaver``.

    Raises:
        ValueError: at the end of an evaluation, when a metric's details have another number of classes than
            ``class_names``.
    """

    def __init__(self, save_dir: str, class_names: Sequence[str] | None = None, **kwargs: Any) -> None:
        super().__init__(save_dir, **kwargs)
        self.class_names = None if class_names is None else [str(name) for name in class_names]

    def __call__(self, engine: Engine) -> None:
        # as MONAI's MetricsSaver.__call__ (1.6), with class_labels passed on
        images = string_list_all_gather(strings=self._filenames) if idist.get_world_size() > 1 else self._filenames
        if idist.get_rank() != self.save_rank:
            return
        metrics = {k: v for k, v in engine.state.metrics.items() if self._selected(k, self.metrics)}
        details = {k: v for k, v in getattr(engine.state, "metric_details", {}).items()
                   if self._selected(k, self.metric_details)}
        if self.class_names is not None:
            for name, values in details.items():
                if values.ndim == 2 and values.shape[1] != len(self.class_names):
                    raise ValueError(f"MetricsSaver: '{name}' has {values.shape[1]} classes per case but class_names "
                                     f"names {len(self.class_names)}: {self.class_names}.")
        with warnings.catch_warnings():  # numpy on a class that is NaN in every case: the summary says so (notnans)
            warnings.filterwarnings("ignore", category=RuntimeWarning,
                                    message="(All-NaN slice|Mean of empty slice|Degrees of freedom)")
            write_metrics_reports(save_dir=self.save_dir, images=images or None, metrics=metrics,
                                  metric_details=details, summary_ops=self.summary_ops, deli=self.deli,
                                  output_type=self.output_type, class_labels=self.class_names)

    @staticmethod
    def _selected(name: str, wanted: Sequence[str] | None) -> bool:
        return wanted is not None and (name in wanted or "*" in wanted)
