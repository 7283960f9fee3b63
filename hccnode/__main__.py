from hccnode.cli import main

raise SystemExit(main())
