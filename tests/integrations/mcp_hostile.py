"""MCP servers that misbehave at start: `python mcp_hostile.py MODE [TAG]`.

``silent``: writes a line to stderr, then never answers the handshake and ignores SIGTERM.
``crash``: writes a traceback-like message to stderr and exits 1.
(TAG only marks the process for tests.processes.tagged.)
"""

import signal
import sys
import time

mode = sys.argv[1]
if mode == "crash":
    sys.stderr.write("Traceback (most recent call last):\nModuleNotFoundError: No module named 'frobnicate'\n")
    sys.exit(1)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sys.stderr.write("listening\n")
sys.stderr.flush()
while True:
    time.sleep(1)
