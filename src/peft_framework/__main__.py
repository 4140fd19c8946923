"""`python -m peft_framework ...` is `peft-framework ...`."""

import sys

from peft_framework.cli import main

sys.exit(main())
