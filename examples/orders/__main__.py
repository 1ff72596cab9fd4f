"""``python -m examples.orders``: run the orders service's scripted end-to-end demo."""

import sys

from .app import main

sys.exit(main())
