"""The paper's reported numbers (Tables 1 and 6 to 9), each printed row a test
(:mod:`gradood.harness.paper_tests`: one ``test_<table>`` per transcribed table)."""

from gradood.harness.paper_tests import *  # noqa: F403 (collected by pytest)
