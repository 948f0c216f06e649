"""hpo's Python API: what every command does, as functions a script or a notebook calls (the CLI
is a thin layer over them)."""
