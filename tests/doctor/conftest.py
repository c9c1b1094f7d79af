"""Makes the fake NVML importable as `fake_nvml` from the doctor's tests."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
