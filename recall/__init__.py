"""Recall: what the feed service calls.

    events.EventConsumer: Kafka user events -> state.UserStates (MongoDB, idempotent;
        bad events and refused updates to the dead-letter topic, bounded)
    recaller.Recaller: state.user_document (one read; towers.dataset.behaviour, as in
        training) -> serving.ServingResolver (alias -> concrete index + model version +
        towers) -> user vector -> channels (one _msearch on the concrete index) -> fusion
        (RRF / quota, provenance) -> request.RecallResponse
    api.create_app: the FastAPI service around a Recaller (413/422/503, never a 500 for
        bad input); metrics: the Prometheus registries of the service and the consumer

Depends on ``towers``, ``indexer`` (the index layout) and the ``runtime`` leaf; owns its
settings (``recall.settings``).
"""
