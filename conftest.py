# The one place that registers gradood's pytest plugin (options, markers, fixtures) for both
# `pytest tests` and `pytest benchmarks`; pytester lets the tests run pytest itself.
pytest_plugins = ["gradood.pytest_plugin", "pytester"]
