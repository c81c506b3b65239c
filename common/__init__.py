"""Base utilities below ``crobim`` and ``pipelines``: object storage (local paths, ``s3://``, ``gs://``)."""
