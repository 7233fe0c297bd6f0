"""kmtools command-line front end (installed as ``kmtools_cli``): parsing and rendering only."""
