rule train:
    """Target: train the compact concept head on ../shared/data (resumable; not in `all`)."""
    input:
        config=workflow.source_path("../../configs/train_compact.yaml"),
    output:
        head=f"{OUT}/train/compact_head.safetensors",
    log:
        f"{OUT}/logs/train.log",
    conda:
        "../../envs/medsam3.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
    script:
        "../scripts/train.py"
