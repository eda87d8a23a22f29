import sys

from bonn_serve.cli import main

sys.exit(main())
