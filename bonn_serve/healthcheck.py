"""`python -m bonn_serve.healthcheck`: exit 0 when the local server answers /readyz (container HEALTHCHECK).

The runtime image has no curl; this needs only the standard library.
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('BONN_PORT', '3000')}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=4) as resp:
            return 0 if resp.status == 200 else 1
    except OSError as e:
        print(f"healthcheck: {url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
