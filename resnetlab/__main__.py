"""`python -m resnetlab ...` (and `torchrun -m resnetlab ...`) run the command-line tool."""

from .cli import main

raise SystemExit(main())
