"""The two-tower model and everything about a model version.

    documents --features.FeatureSpec / featurizer.Featurizer--> tensors
        training: dataset (files or MongoDB) -> leave-last-out split -> train.train()
                  -> evaluate (HR/Recall/NDCG@K vs most-popular)
        serving:  artifact.ModelArtifact (exported towers + manifest, checksummed)
                  <- registry.ModelRegistry (MongoDB GridFS) -> embed_items / embed_users

Depends only on the ``runtime`` leaf (its error family). ``dataset.behaviour`` and
``dataset.usable_tags`` are the one definition of a user document and of an item's tags
that training, the indexer and recall share.
"""
