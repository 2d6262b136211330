"""The paper's reported numbers (Tables 1 and 6 to 9), each printed row a test
(:mod:`gradood.harness.paper_tests`)."""

from gradood.harness.paper_tests import (  # noqa: F401 (collected by pytest)
    test_table1,
    test_table6,
    test_table7,
    test_table8,
    test_table9,
)
