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
        **segment_resources(),
    params:
        shard=get_shard,
        settings=SEGMENT_SETTINGS.to_params(),
    script:
        "../scripts/segment_shard.py"
