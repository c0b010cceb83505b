"""Pipeline stages: cohort tables, ingest, segmentation shards, aggregation, output layout."""
