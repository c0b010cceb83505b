rule segment_shard:
    """Segment a shard of studies with one model load (GPU when configured)."""
    input:
        get_shard_ingest_statuses,
    output:
        status=LAYOUT.status("segment", "{shard}"),
    log:
        LAYOUT.log("segment", "{shard}"),
    conda:
        "../../envs/medsam3.yaml"
    threads: 2
    resources:
        **rule_resources("segment"),
        gpu=JobResources.from_config(config, "segment").gpu,
    params:
        shard=get_shard,
        settings=SEGMENT_SETTINGS.to_params(),
    script:
        "../scripts/segment_shard.py"
