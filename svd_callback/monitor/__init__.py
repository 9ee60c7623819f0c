"""The parts of :class:`~svd_callback.SpectralMonitor`, one job each.

- :class:`~svd_callback.monitor.guard.Guard`: never crash training, warn once;
- :class:`~svd_callback.monitor.runner.AnalysisRunner`: one analysis (input-size probe, the
  split of the layers over the ranks and the gather, the class probe hand-off, aggregates and
  alerts, :mod:`~svd_callback.monitor.gather`), returned as a frozen
  :class:`~svd_callback.monitor.result.AnalysisResult`;
- :mod:`~svd_callback.monitor.scalars`: every logged scalar of a result as a typed record;
- :class:`~svd_callback.monitor.publisher.Publisher`: loggers, ``callback_metrics``,
  TensorBoard extras and figures, the heat-map store and the history file;
- :mod:`~svd_callback.monitor.trainer_access`: every read of Lightning's private state;
- :mod:`~svd_callback.monitor.checkpoint`: the layouts of the checkpointed state.

The callback (:mod:`svd_callback.callback`) holds a runner and a publisher with a
:class:`~svd_callback.schedule.Schedule`, calls them from its Lightning hooks, and checkpoints
each one's own ``state_dict``.
"""
