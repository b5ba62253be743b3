"""esrec's shell: the settings model that composes every package's sections, the local
stack, the doctor, the demo and the single `esrec` command line (which wires the
packages and maps their errors to exit codes).

The domain lives in the sibling packages: ``towers`` (the two-tower model and its
versions), ``indexer`` (MongoDB change stream -> item tower -> Elasticsearch) and
``recall`` (user embedding, recall channels, fusion, HTTP service); ``runtime`` is the
leaf they all share. No package imports the shell (tests/test_layers.py).
"""
