import sys

from benchmarks.cpu import main

sys.exit(main())
