rule segment_shard:
    """Segment a shard of studies with one model load (GPU when configured)."""
    input:
        get_shard_ingest_statuses,
    output:
        status=f"{OUT}/status/segment/{{shard}}.json",
    log:
        f"{OUT}/logs/segment/{{shard}}.log",
    conda:
        "../../envs/medsam3.yaml"
    threads: 2
    resources:
        **rule_resources("segment"),
        gpu=config["resources"].get("segment", {}).get("gpu", 0),
    params:
        studies=get_shard_studies,
        settings=segment_settings(),
    script:
        "../scripts/segment_shard.py"
