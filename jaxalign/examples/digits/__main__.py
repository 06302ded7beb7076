import sys

from jaxalign.examples.digits.demo import main

sys.exit(main())
