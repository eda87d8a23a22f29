"""Where the real CIFAR-10 data is: $BONN_DATA_DIR, else ../shared/data/cifar10 next to the checkout.
Tests that need it skip cleanly when it is absent, so a fresh clone still passes."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CIFAR_DIR = Path(os.environ.get("BONN_DATA_DIR", REPO.parent / "shared" / "data" / "cifar10"))
