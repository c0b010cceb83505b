"""Report tables: schemas, row builders, metrics, provenance and the HTML summary."""
