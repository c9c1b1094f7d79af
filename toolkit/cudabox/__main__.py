from cudabox.cli import main

raise SystemExit(main())
