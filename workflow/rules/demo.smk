rule demo_data:
    """Build the embedded demo cohort from package-shipped medical data (no download)."""
    input:
        code=workflow.source_path("../../src/medsam3/pipeline/demo.py"),  # rebuild when it changes
    output:
        directory(str(DEMO_DATA)),
    log:
        LAYOUT.log("demo_data"),
    conda:
        "../../envs/medsam3.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/build_demo.py"
