# gradood's pytest plugin is registered by its pytest11 entry point (pyproject.toml); pytester
# lets the tests run pytest itself.
pytest_plugins = ["pytester"]
