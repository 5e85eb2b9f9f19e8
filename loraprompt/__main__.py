"""Run `python -m loraprompt ...` like the `loraprompt` command."""

import sys

from loraprompt.cli import main

sys.exit(main())
