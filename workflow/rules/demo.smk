rule demo_data:
    """Build the embedded demo cohort from package-shipped medical data (no download)."""
    output:
        directory(str(DEMO_DATA)),
    log:
        "logs/demo_data.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/medsam3.yaml"
    script:
        "../scripts/build_demo.py"
