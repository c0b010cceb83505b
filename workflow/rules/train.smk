rule train_base:
    """Stage 1 of the compact concept head on ../shared/data (resumable; not in `all`)."""
    input:
        config=workflow.source_path("../../configs/train_compact.yaml"),
    output:
        head=LAYOUT.trained_head("compact_head_base"),
    log:
        LAYOUT.log("train_base"),
    conda:
        "../../envs/medsam3.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
    script:
        "../scripts/train.py"


rule train:
    """Target: stage 2 (balanced sampling, atlas slices) from the stage-1 head; as shipped."""
    input:
        config=workflow.source_path("../../configs/train_compact_finetune.yaml"),
        init=rules.train_base.output.head,
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
