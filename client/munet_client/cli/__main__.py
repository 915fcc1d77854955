import sys

from munet_client.cli.main import main

sys.exit(main())
