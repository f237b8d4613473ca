import sys

from deqnca.cli import main

sys.exit(main())
