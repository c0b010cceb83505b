"""The ``medsam3`` command line: discover, segment, concepts, train, evaluate, demo."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from medsam3._version import __version__

# Each subcommand imports what it runs when it runs: `medsam3 --help`, `--version` and
# `concepts` start in 0.2 s instead of the 2.7 s that importing every subcommand's module takes
# (measured on the 2-core CI machine); `segment`, `train` and `evaluate` then import torch.


def _cmd_discover(args: argparse.Namespace) -> int:
    from medsam3.pipeline.discover import main_discover

    main_discover(args.folder, args.output, salt=args.salt)
    return 0


def _cmd_segment(args: argparse.Namespace) -> int:
    from medsam3.pipeline.segment_file import check_request

    # Everything the user gave is checked before the model loads (15 s on a CPU).
    image, phrases, modality = check_request(args.input, args.prompt, args.output, args.modality)
    from medsam3 import load_model
    from medsam3.models.build import precision_kwargs, resolve_device
    from medsam3.pipeline.segment_file import segment_file

    device = resolve_device(args.backend, args.device)
    options = {}
    if args.lora:
        if args.backend != "sam3":
            raise ValueError("--lora adapts SAM 3 weights; use it with --backend sam3")
        options = {"lora": args.lora, "lora_alpha": args.lora_alpha}
    if args.key_spacing is not None:
        if args.backend != "compact":
            raise ValueError("--key-spacing applies to the compact backend")
        options["key_spacing_mm"] = args.key_spacing
    if args.no_upright:
        if args.backend != "compact":
            raise ValueError("--no-upright applies to the compact backend")
        options["upright"] = False
    options |= precision_kwargs(args.backend, args.precision)
    agent = None if args.agent == "off" else {"mode": args.agent, "endpoint": args.agent_endpoint}
    model = load_model(
        args.backend, checkpoint=args.checkpoint, device=device, agent=agent, **options
    )
    summary = segment_file(
        args.input, phrases, args.output, model, modality, multilabel=args.ml, image=image
    )
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        for line in _summary_lines(summary, args.output):
            print(line)
    return 0


def _summary_lines(summary: dict, output: str) -> list[str]:
    """One line per concept (presence, instances, size with its unit, files), then the summary."""
    lines = []
    for phrase, c in summary["concepts"].items():
        if "volume_ml" in c:
            size = f"{c['volume_ml']:.1f} ml"
        elif "area_mm2" in c:
            size = f"{c['area_mm2']:.0f} mm²"
        else:
            size = f"{c['voxels']} {'pixels' if summary['input_kind'] != 'volume' else 'voxels'}"
            size += " (no physical spacing)" if summary["spacing_unit"] == "pixel" else ""
        files = ", ".join(c["files"])
        critic = ""
        if "critic_score" in c:
            critic = f", critic {c['critic_score']:.2f}" + (" (review)" if c["review"] else "")
        lines.append(
            f"{phrase}: presence {c['presence']:.2f}, {c['n_instances']} instance(s), {size}"
            f"{critic} -> {files}"
        )
    lines.append(f"summary: {Path(output) / 'summary.json'}")
    return lines


def _cmd_import_weights(args: argparse.Namespace) -> int:
    from medsam3.models.sam3_import import import_weights

    out = import_weights(
        args.output,
        checkpoint=args.checkpoint,
        native=args.native,
        lora=args.lora,
        alpha=args.lora_alpha,
        peft=args.peft,
        config=args.config,
        dtype=args.dtype,
    )
    lora = f" --lora {out / 'adapter'}" if args.peft and args.lora else ""
    print(f"wrote {out}; run: medsam3 segment IMAGE -p PHRASE -o OUT --backend sam3 "
          f"--checkpoint {out}{lora}")  # fmt: skip
    return 0


def _cmd_concepts(args: argparse.Namespace) -> int:
    from medsam3.models.concepts import vocabulary_table

    print(f"{'concept':<30} {'body part':<16} {'modality':<16} {'parent':<12} synonyms")
    for row in vocabulary_table():
        print(
            f"{row['concept']:<30} {row['body_part']:<16} {row['modality']:<16} "
            f"{row['parent']:<12} {row['synonyms']}"
        )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from medsam3.training.train import main as train_main

    train_main(args.config)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from medsam3.training.evaluate import main as evaluate_main

    evaluate_main(args.extra)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from medsam3.pipeline.demo import build_demo

    print(build_demo(args.output))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``medsam3`` command."""
    parser = argparse.ArgumentParser(prog="medsam3", description=__doc__)
    parser.add_argument("--version", action="version", version=f"medsam3 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("discover", help="scan a folder into a cohort table (one row per series)")
    p.add_argument("folder")
    p.add_argument("-o", "--output", required=True, help="cohort CSV to write")
    p.add_argument("--salt", default="medsam3", help="salt for derived study ids")
    p.set_defaults(func=_cmd_discover)

    p = sub.add_parser(
        "segment",
        help="segment concepts in one image, volume or video",
        description="Segment concepts in one image, volume or video: masks (PNG 0/255, NIfTI "
        "instance ids) and summary.json in the output folder. Inputs, phrases, modality and "
        "the output folder are checked before the model loads.",
    )
    p.add_argument("input", help="file or DICOM series folder")
    p.add_argument("-p", "--prompt", action="append", required=True, help="concept phrase")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--backend", default="compact", choices=["compact", "sam3"])
    p.add_argument("--checkpoint", default=None, help="checkpoint path (default: shipped head)")
    p.add_argument(
        "--lora",
        default=None,
        help="sam3: a MedSAM3 LoRA file (best_lora_weights.pt) or a peft adapter folder",
    )
    p.add_argument("--lora-alpha", type=float, default=32.0, help="alpha of a LoRA file")
    p.add_argument("--modality", default=None, help="override the detected modality")
    p.add_argument(
        "--key-spacing",
        type=float,
        default=None,
        metavar="MM",
        help="compact, volumes: encode key slices MM mm apart and interpolate between "
        "(default 3; 0: every slice)",
    )
    p.add_argument(
        "--no-upright",
        action="store_true",
        help="compact, 2D CT/MRI/X-ray: segment the image as stored instead of first putting it "
        "the right way up (medsam3.models.upright)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="compute precision: bfloat16 runs compact's encoder and decoder under autocast "
        "(about 1.5x faster on CPUs with bf16 instructions and on GPUs; docs/model_card.md) "
        "and casts sam3's weights; auto: compact float32, sam3 as stored",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="auto (cuda when available and the backend runs on it; compact: cpu), cpu, cuda:N",
    )
    p.add_argument(
        "--ml",
        action="store_true",
        help="also write one multi-label NIfTI (segmentations.nii.gz + segmentations.json)",
    )
    p.add_argument(
        "--agent",
        default="off",
        choices=["off", "rules", "mllm"],
        help="check and improve each result: rules (offline critic + planner) or mllm (an "
        "OpenAI-compatible endpoint picks the fixes); see docs/agent.md",
    )
    p.add_argument(
        "--agent-endpoint",
        default="http://127.0.0.1:8000/v1",
        help="--agent mllm: the endpoint (loopback only)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    out.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser(
        "import-weights",
        help="convert SAM 3 weights (+ a MedSAM3 LoRA) into a folder the sam3 backend loads",
    )
    p.add_argument("output", help="checkpoint folder to write")
    base = p.add_mutually_exclusive_group(required=True)
    base.add_argument("--checkpoint", help="transformers SAM 3 folder (e.g. facebook/sam3)")
    base.add_argument("--native", help="native SAM 3 checkpoint file (sam3.pt): detector only")
    p.add_argument("--lora", help="MedSAM3 LoRA file (best_lora_weights.pt) to fold in")
    p.add_argument("--lora-alpha", type=float, default=32.0, help="LoRA alpha (MedSAM3: 32)")
    p.add_argument("--peft", action="store_true", help="write the LoRA as OUTPUT/adapter")
    p.add_argument("--config", help="config.json of a native checkpoint of non-default size")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="stored dtype")
    p.set_defaults(func=_cmd_import_weights)

    p = sub.add_parser("concepts", help="list the concept vocabulary")
    p.set_defaults(func=_cmd_concepts)

    p = sub.add_parser("train", help="train the compact concept head")
    p.add_argument("--config", default="configs/train_compact.yaml")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "evaluate",
        help="evaluate the compact backend on ../shared/data's test split",
        add_help=False,
    )
    p.set_defaults(func=_cmd_evaluate)  # its own options: medsam3 evaluate --help

    p = sub.add_parser("demo", help="build the embedded demo cohort")
    p.add_argument("-o", "--output", default="results/demo", help="folder (not the checkout)")
    p.set_defaults(func=_cmd_demo)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    """medsam3's own log lines on stderr; other libraries' INFO lines and progress bars stay
    off (the root logger is left at WARNING: sentence-transformers shows its "Batches" bar
    only when its logger is at INFO)."""
    level = logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.INFO
    logger = logging.getLogger("medsam3")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Entry point; expected errors print one line and exit 1 instead of a traceback."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "evaluate":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    args.quiet = getattr(args, "quiet", False)
    _setup_logging(args)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError) as exc:
        if args.verbose:
            raise
        message = " ".join(str(exc).split())  # one line, whatever the exception held
        print(f"medsam3 {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
