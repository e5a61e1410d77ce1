"""``python -m deploy.demo``: the end-to-end demo (``deploy.demo.cli``; ``--help`` says what it does).

Its libraries (torch, grpc, duckdb) take seconds to load; a Ctrl-C meanwhile, before anything started, ends
the run with one line instead of an import traceback.
"""

import sys

try:
    from deploy.demo.cli import main
except KeyboardInterrupt:
    print("\ninterrupted while the demo loaded its libraries; nothing was started", file=sys.stderr)
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
