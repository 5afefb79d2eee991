"""Benchmarks: KD quality against the baseline and Ultralytics' built-in KD (``quality``), training cost
(``speed``), and the reports gathered in ``benchmarks/RESULTS.md`` (``report``)."""
