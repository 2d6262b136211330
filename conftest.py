# gradood's pytest plugin is registered by its pytest11 entry point (pyproject.toml); pytester
# lets the tests run pytest itself.
import os

pytest_plugins = ["pytester"]

# Read by OpenMP when torch loads (after this file: neither pytest nor gradood's plugin imports
# torch), and inherited by the processes the runs start: idle OpenMP threads sleep instead of
# spinning for their next task, which on a shared machine burns the cores the others wait for.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_addoption(parser):
    """This repository's short spellings of gradood's options: ``pytest benchmarks --gpu``
    means ``--gradood-gpu`` (the installed plugin keeps only the prefixed names)."""
    from gradood.harness.spelling import add_short_spellings

    add_short_spellings(parser)
