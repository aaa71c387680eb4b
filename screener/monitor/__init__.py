"""Label-free drift monitoring: the films a site sends, window by window, against the
distribution the bundle's own validation films gave (``reference.json`` in the bundle).

- :mod:`screener.monitor.statistics`: the statistics (KS distance, absolute difference,
  total-variation distance) and their thresholds from resampled reference windows;
- :mod:`screener.monitor.reference`: the reference file, made by ``screener reference``;
- :mod:`screener.monitor.drift`: the rolling window read from the database, the comparison,
  and the timer in ``screener serve`` that logs ``drift_detected``.
"""
