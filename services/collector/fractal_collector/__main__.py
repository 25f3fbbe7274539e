import sys

from fractal_collector.main import main

sys.exit(main())
