rule train_stage1:
    """The compact concept head's first stage on ../shared/data (resumable)."""
    input:
        config=workflow.source_path("../../configs/train_compact.yaml"),
    output:
        head=LAYOUT.trained_head("compact_head_stage1"),
    log:
        LAYOUT.log("train_stage1"),
    conda:
        "../../envs/medsam3.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
    script:
        "../scripts/train.py"


rule train_stage2:
    """Stage 2: stage 1 trained on with more easy negatives and a lower learning rate."""
    input:
        config=workflow.source_path("../../configs/train_compact_stage2.yaml"),
        init=rules.train_stage1.output.head,
    output:
        head=LAYOUT.trained_head("compact_head_stage2"),
    log:
        LAYOUT.log("train_stage2"),
    conda:
        "../../envs/medsam3.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
    script:
        "../scripts/train.py"


rule train:
    """Target: the compact concept head as shipped (v4: stage 2 grown by position channels and
    context blocks, trained on; not in `all`)."""
    input:
        config=workflow.source_path("../../configs/train_compact_v4.yaml"),
        init=rules.train_stage2.output.head,
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
