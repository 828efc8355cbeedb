"""``python -m directmilter``."""

from directmilter.cli import main

raise SystemExit(main())
