"""The parts of :class:`~svd_callback.SpectralMonitor`, one job each.

- :class:`~svd_callback.monitor.guard.Guard`: never crash training, warn once;
- :class:`~svd_callback.monitor.runner.AnalysisRunner`: one analysis (input-size probe, the
  split of the layers over the ranks and the gather, the class probe hand-off, aggregates and
  alerts), returned as a frozen :class:`~svd_callback.monitor.result.AnalysisResult`;
- :class:`~svd_callback.monitor.publisher.Publisher`: tags, loggers, ``callback_metrics``,
  TensorBoard extras and figures, the heat-map store and the history file.

The callback (:mod:`svd_callback.callback`) holds one of each with a
:class:`~svd_callback.schedule.Schedule` and calls them from its Lightning hooks.
"""
