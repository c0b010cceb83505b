rule report:
    """Aggregate statuses and per-study parts into Parquet reports and report.html (Dask)."""
    input:
        ingest=get_ingest_statuses(),
        segment=get_segment_statuses(),
    output:
        studies=f"{OUT}/reports/studies.parquet",
        segments=f"{OUT}/reports/segments.parquet",
        metrics=f"{OUT}/reports/metrics.parquet",
        failures=f"{OUT}/reports/failures.parquet",
        provenance=f"{OUT}/reports/provenance.parquet",
        html=report(
            f"{OUT}/reports/report.html",
            caption="../report/report.rst",
            category="Summary",
        ),
    log:
        f"{OUT}/logs/report.log",
    conda:
        "../../envs/medsam3.yaml"
    threads: 2
    resources:
        **rule_resources("report"),
    params:
        settings=report_settings(),
        ground_truth=GROUND_TRUTH,
    script:
        "../scripts/report.py"
