"""esrec's shell: settings, server clients, the local stack and the `esrec` command line.

The domain lives in the sibling packages: ``towers`` (the two-tower model and its
versions), ``indexer`` (MongoDB change stream -> item tower -> Elasticsearch) and
``recall`` (user embedding, recall channels, fusion, HTTP service).
"""
