"""Recall: what the feed service calls.

    events.EventConsumer: Kafka user events -> state.UserStates (MongoDB, idempotent)
    recaller.Recaller: state.user_document (one read) -> serving.ServingResolver (alias ->
        concrete index + model version + towers) -> user vector -> channels (one _msearch
        on the concrete index) -> fusion (RRF / quota, provenance) -> request.RecallResponse
    api.create_app: the FastAPI service around a Recaller
"""
