rule train:
    """Target: the compact concept head on ../shared/data, as shipped (resumable; not in `all`)."""
    input:
        config=workflow.source_path("../../configs/train_compact.yaml"),
    output:
        head=LAYOUT.trained_head("compact_head"),
    log:
        LAYOUT.log("train"),
    conda:
        "../../envs/medsam3.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
    script:
        "../scripts/train.py"
