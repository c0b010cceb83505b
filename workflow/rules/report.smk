rule report:
    """Aggregate statuses and per-study parts into Parquet reports and report.html (Dask)."""
    input:
        ingest=get_ingest_statuses(),
        segment=get_segment_statuses(),
    output:
        studies=LAYOUT.table("studies"),
        segments=LAYOUT.table("segments"),
        metrics=LAYOUT.table("metrics"),
        failures=LAYOUT.table("failures"),
        provenance=LAYOUT.table("provenance"),
        agent_trace=LAYOUT.table("agent_trace"),
        html=report(
            LAYOUT.html_report(),
            caption="../report/report.rst",
            category="Summary",
        ),
        sizes=report(
            LAYOUT.report_figures() / "sizes.png",
            caption="../report/sizes.rst",
            category="Figures",
        ),
        dice=report(
            LAYOUT.report_figures() / "dice.png",
            caption="../report/dice.rst",
            category="Figures",
        ),
        overlays=report(
            LAYOUT.report_figures() / "overlays.png",
            caption="../report/overlays.rst",
            category="Figures",
        ),
        timing=LAYOUT.report_timing(),
    log:
        LAYOUT.log("report"),
    conda:
        "../../envs/medsam3.yaml"
    threads: 2
    resources:
        **rule_resources("report"),
    params:
        settings=REPORT_SETTINGS.to_params(),
    script:
        "../scripts/report.py"
