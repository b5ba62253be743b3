"""The indexer: MongoDB catalog changes -> item tower -> Elasticsearch, nothing lost or stale.

    items --watch(updateLookup)--> source.ChangeStreamSource  (versioning: clusterTime+seq)
        -> pipeline.Pipeline: coalesce -> documents.project (checks) -> item tower per
           target -> sink.ElasticsearchSink (_bulk, external versions; 409 = stale, dropped)
           -> dead_letters (bad documents, error budget)
        -> checkpoint.Checkpoints.save  (only after every write is acknowledged)
    backfill: scan by _id at operation time T -> same pipeline -> stream from T
    daemon.Indexer: the loop, outages, health and metrics; layout: index names, mapping,
    aliases, tombstones.
"""
