"""The benchmark harness's pieces that are not pytest glue: side-by-side timing with verdicts,
the bundled benchmark, and the run's closing summary."""
