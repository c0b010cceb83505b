rule ingest_study:
    """Read one study (DICOM series, NIfTI/NRRD/MHA, image, video) into a chunked Zarr store."""
    input:
        unpack(get_ingest_input),
    output:
        status=f"{OUT}/status/ingest/{{study}}.json",
    log:
        f"{OUT}/logs/ingest/{{study}}.log",
    conda:
        "../../envs/medsam3.yaml"
    threads: 1
    resources:
        **rule_resources("ingest"),
    params:
        path=get_study_path,
        modality=get_study_modality,
        report_paths=config.get("report_paths", False),
    script:
        "../scripts/ingest_study.py"


rule ingest_report:
    """Write reports/failures.parquet from the ingest statuses (the full report rewrites it)."""
    input:
        get_ingest_statuses(),
    output:
        done=touch(f"{OUT}/reports/ingest.done"),
    log:
        f"{OUT}/logs/ingest_report.log",
    conda:
        "../../envs/medsam3.yaml"
    threads: 1
    resources:
        **rule_resources("report"),
    script:
        "../scripts/ingest_report.py"


rule ingest:
    """Target: stop after the Zarr stores and the ingest reports."""
    input:
        rules.ingest_report.output,
