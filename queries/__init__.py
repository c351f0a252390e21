"""Query jobs, the twin of ``ingestion``: the result cache, job notices and result views."""
