rule ingest_study:
    """Read one study (DICOM series, NIfTI/NRRD/MHA, image, video) into a chunked Zarr store."""
    input:
        unpack(get_ingest_input),
    output:
        status=f"{OUT}/status/ingest/{{study}}.json",
    log:
        f"{OUT}/logs/ingest/{{study}}.log",
    params:
        path=get_study_path,
        modality=get_study_modality,
        outdir=OUT,
        report_paths=config.get("report_paths", False),
    threads: 1
    resources:
        **rule_resources("ingest"),
    conda:
        "../../envs/medsam3.yaml"
    script:
        "../scripts/ingest_study.py"


rule ingest_report:
    """Collect ingest statuses into reports/studies.parquet and reports/failures.parquet."""
    input:
        get_ingest_statuses(),
    output:
        done=touch(f"{OUT}/reports/ingest.done"),
    log:
        f"{OUT}/logs/ingest_report.log",
    params:
        outdir=OUT,
    threads: 1
    resources:
        **rule_resources("report"),
    conda:
        "../../envs/medsam3.yaml"
    script:
        "../scripts/ingest_report.py"


rule ingest:
    """Target: stop after the Zarr stores and the ingest reports."""
    input:
        rules.ingest_report.output,
