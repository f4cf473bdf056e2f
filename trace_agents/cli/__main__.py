import sys

from trace_agents.cli import main

sys.exit(main())
