"""The two-tower model and everything about a model version.

    documents --features.FeatureSpec / featurizer.Featurizer--> tensors
        training: dataset (files or MongoDB) -> leave-last-out split -> train.train()
                  -> evaluate (HR/Recall/NDCG@K vs most-popular)
        serving:  artifact.ModelArtifact (exported towers + manifest, checksummed)
                  <- registry.ModelRegistry (MongoDB GridFS) -> embed_items / embed_users

Depends on nothing else in esrec.
"""
