"""One module per command, each a sequence of named steps: upload (and link), download, verify."""
