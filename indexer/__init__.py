"""The indexer: MongoDB catalog changes -> item tower -> Elasticsearch, nothing lost or stale.

    source.ChangeStreamSource (live) | snapshot.SnapshotSource (backfill)   -> changes.Batch
        -> driver.drive: pipeline.Pipeline.prepare (park flagged changes, coalesce,
           documents.project checks, item tower per target) -> writers.Writers (two
           threads: Pipeline.commit -> sink.ElasticsearchSink, _bulk with external versions,
           409 = stale and dropped, refusals -> dead_letters) -> the job's save, in order
    daemon.Indexer: the live job; saves checkpoint.Checkpoints positions (after every write
        of the batch is acknowledged), follower.Follower picks up model versions, health
        and lag on the server's clock; backfill: the snapshot job (version (T, 0))
    lifecycle.Versions: build, promote, rollback, retire, resync, status of model versions;
        rollout.roll: build -> gates.validate -> promote -> probe -> rollback
    layout: index names, mapping, aliases, tombstones; versioning: external versions;
    quantization: hnsw or int8_hnsw by measured recall; service.Services: the wiring.

Depends on ``towers`` and the ``runtime`` leaf; owns its settings (``indexer.settings``).
"""
