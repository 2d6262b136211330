# gradood's pytest plugin is registered by its pytest11 entry point (pyproject.toml); pytester
# lets the tests run pytest itself.
pytest_plugins = ["pytester"]


def pytest_addoption(parser):
    """This repository's short spellings of gradood's options: ``pytest benchmarks --gpu``
    means ``--gradood-gpu`` (the installed plugin keeps only the prefixed names)."""
    from gradood.harness.spelling import add_short_spellings

    add_short_spellings(parser)
