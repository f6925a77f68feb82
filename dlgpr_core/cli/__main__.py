"""`python -m dlgpr_core.cli` is `dlgpr`."""

from dlgpr_core.cli import main

main()
