"""What every esrec process needs to run, whatever it does: the settings sections of the
servers and the HTTP endpoints, clients built from them, one retry helper, one error
family, health (/healthz, /livez), the metrics and signal plumbing, structured logs.

A leaf: it imports none of esrec's packages; ``towers``, ``indexer``, ``recall`` and the
``esrec`` shell all build on it.
"""
