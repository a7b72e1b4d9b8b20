"""Where shard sets live and how their bytes are read: local paths and s3://, gs://, http(s):// URLs
behind one interface with retries (`storage`), a bounded local cache of whole shards (`cache`), and
reading a shard set's samples through its indexes (`shardset`).
"""
