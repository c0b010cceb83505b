rule ingest_study:
    """Read one study (DICOM series, NIfTI/NRRD/MHA, image, video) into a chunked Zarr store."""
    input:
        unpack(get_ingest_input),
    output:
        status=LAYOUT.status("ingest", "{study}"),
    log:
        LAYOUT.log("ingest", "{study}"),
    conda:
        "../../envs/medsam3.yaml"
    threads: 1
    resources:
        **rule_resources("ingest"),
    params:
        study=get_ingest_study,
        settings=INGEST_SETTINGS.to_params(),
    script:
        "../scripts/ingest_study.py"


rule ingest_report:
    """Write reports/ingest_failures.parquet from the ingest statuses (the ingest target)."""
    input:
        get_ingest_statuses(),
    output:
        failures=LAYOUT.ingest_failures(),
    log:
        LAYOUT.log("ingest_report"),
    conda:
        "../../envs/medsam3.yaml"
    threads: 1
    resources:
        **rule_resources("report"),
    script:
        "../scripts/ingest_report.py"


rule ingest:
    """Target: stop after the Zarr stores and the ingest failures table."""
    input:
        rules.ingest_report.output,
