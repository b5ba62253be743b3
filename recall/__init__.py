"""Recall: what the feed service calls.

    serving.ServingResolver: serving alias -> concrete index + the model version that
        built it (its _meta) -> that version's towers, cached per version
"""
