"""The ingestion engine: how accepted documents, deletes and drops reach Milvus.

Plain library code (no Flask, no Celery); the API calls ``outbox`` to record what it
accepted, and the workers' one ingestion task calls ``engine.run``.

- ``outbox``: work accepted, written in the same SQL transaction as the rows it is about.
- ``engine``: runs one outbox entry; the one retry policy (``retry``) decides what a
  failure means.
- ``ingest``: an ingestion chunk. ``reindex``: building and switching a generation.
  ``vectors``: deletes and drops. ``writer``: the write that keeps the newest revision.
- ``sweep``: sends again what the broker lost. ``reconcile``: re-embeds what Milvus lost.
- ``chunks``: the one chunker.
"""
