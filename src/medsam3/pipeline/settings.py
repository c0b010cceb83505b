"""Typed settings of the pipeline jobs, read from the validated workflow config.

``common.smk`` validates ``config.yaml`` against ``workflow/schemas/config.schema.yaml`` with
``set_default=True``, so every optional key holds its schema default; the classes here read the
keys a job needs and carry them across the Snakemake boundary as rule params
(``to_params()`` in the rule, ``from_params()`` in the job). Defaults live in the schema only.
The params double as Snakemake's rerun trigger: a job re-runs when its settings change.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

import yaml

from medsam3.models.build import uses_gpu
from medsam3.pipeline.layout import Layout

DEMO_SALT = "medsam3-demo-salt"  # config.yaml's salt: public, so fine for the demo cohort only
AUTO = "auto"  # config ground_truth: the demo table for the demo cohort, none for any other


class _JobSettings:
    """The verbs every job's settings share: rule params both ways, and the output layout."""

    outdir: str

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`to_params` output."""
        return cls(**params)

    def to_params(self) -> dict[str, Any]:
        """Plain values for a rule's params."""
        return asdict(self)

    @property
    def layout(self) -> Layout:
        """The output layout under ``outdir``."""
        return Layout(self.outdir)


@dataclass(frozen=True)
class ModelSettings:
    """``config["model"]``: the backend a segment job loads (see the schema for each key)."""

    backend: str
    checkpoint: str
    lora: str
    device: str
    key_spacing_mm: float | None = None  # compact: None keeps the backend's default
    precision: str = "auto"  # auto: compact float32, sam3 the checkpoint's stored dtype
    upright: bool = True  # compact: 2D radiology images put the right way up

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelSettings:
        """Read ``config["model"]`` (validated, defaults filled)."""
        model = config["model"]
        return cls(
            model["backend"],
            model["checkpoint"],
            model["lora"],
            model["device"],
            model.get("key_spacing_mm"),
            model.get("precision", "auto"),
            model.get("upright", True),
        )


@dataclass(frozen=True)
class IngestSettings(_JobSettings):
    """What an ingest job needs besides its study."""

    outdir: str
    report_paths: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> IngestSettings:
        """Read the ingest keys of the validated config."""
        return cls(config["outdir"], config["report_paths"])


@dataclass(frozen=True)
class SegmentSettings(_JobSettings):
    """What a segment shard job needs besides its studies.

    ``to_params()`` is also the configuration hashed into the provenance table. ``agent`` is
    ``config["agent"]`` (None when the config has none; its mode "off" is the default).
    """

    outdir: str
    model: ModelSettings
    export: tuple[str, ...]
    default_concepts: dict[str, list[str]]
    report_paths: bool
    warnings: tuple[str, ...] = ()
    agent: dict[str, Any] | None = None

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], warnings: tuple[str, ...] = ()
    ) -> SegmentSettings:
        """Read the segmentation keys of the validated config.

        Args:
            config: the validated workflow config.
            warnings: the run's configuration warnings (:func:`run_warnings`), logged by each
                segment job and kept in the provenance table.
        """
        return cls(
            outdir=config["outdir"],
            model=ModelSettings.from_config(config),
            export=tuple(config["export"]),
            default_concepts={k: list(v) for k, v in config["default_concepts"].items()},
            report_paths=config["report_paths"],
            warnings=tuple(warnings),
            agent=_agent(config),
        )

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SegmentSettings:
        """Rebuild from :meth:`to_params` output."""
        fields = dict(params)
        fields["model"] = ModelSettings(**fields["model"])
        fields["export"] = tuple(fields["export"])
        fields["warnings"] = tuple(fields.get("warnings", ()))
        return cls(**fields)

    def to_params(self) -> dict[str, Any]:
        """Plain values for a rule's params (lists, not tuples)."""
        params = asdict(self)
        params["export"] = list(self.export)
        params["warnings"] = list(self.warnings)
        return params


_SCALAR_TYPES = {"integer": int, "number": (int, float), "boolean": bool}


def typed_config(config: Any, schema: Mapping[str, Any]) -> Any:
    """``config`` with the strings that ``snakemake --config`` leaves in nested values typed.

    Snakemake reads ``--config agent="{mode: rules, max_rounds: 1}"`` with YAML's base loader,
    so every nested scalar arrives as a string ("1", "true"). A string where the schema wants
    an integer, number or boolean is read as YAML and kept when it has that type; anything
    else is left for the schema to reject with its own message.

    Args:
        config: a config value (the whole config at the top).
        schema: the JSON schema of that value (``workflow/schemas/config.schema.yaml``).

    Returns:
        A copy with those strings replaced.
    """
    if isinstance(config, Mapping):
        props = schema.get("properties", {})
        return {k: typed_config(v, props.get(k, {})) for k, v in config.items()}
    if isinstance(config, list):
        return [typed_config(v, schema.get("items", {})) for v in config]
    wanted = schema.get("type")
    if isinstance(config, str) and isinstance(wanted, str) and wanted in _SCALAR_TYPES:
        try:
            value = yaml.safe_load(config)
        except yaml.YAMLError:
            return config
        if isinstance(value, _SCALAR_TYPES[wanted]) and not (
            wanted != "boolean" and isinstance(value, bool)
        ):
            return value
    return config


def _agent(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """``config["agent"]`` when its mode turns the agent on, else None (off)."""
    agent = dict(config.get("agent") or {})
    return agent if agent.get("mode", "off") != "off" else None


@dataclass(frozen=True)
class ReportSettings(_JobSettings):
    """What the report job needs besides the status files."""

    outdir: str
    nsd_tolerance_mm: float
    dask: dict[str, Any]
    ground_truth: str
    cohort: str = ""

    @classmethod
    def from_config(cls, config: Mapping[str, Any], ground_truth: str) -> ReportSettings:
        """Read the report keys of the validated config.

        Args:
            config: the validated workflow config.
            ground_truth: ``config["ground_truth"]`` resolved to a path ("" for no metrics).
        """
        return cls(
            config["outdir"],
            config["nsd_tolerance_mm"],
            dict(config["dask"]),
            ground_truth,
            config["cohort"],
        )


@dataclass(frozen=True)
class JobResources:
    """``config["resources"][group]``: memory (MB), runtime (minutes) and GPUs of a job."""

    mem_mb: int
    runtime: int
    gpu: int | str

    @classmethod
    def from_config(cls, config: Mapping[str, Any], group: str) -> JobResources:
        """Read one rule group's resources (ingest, segment or report)."""
        return cls(**config["resources"][group])

    def gpus(self, model: ModelSettings | None = None) -> int:
        """GPUs to ask for: the configured count, or for "auto" 1 when ``model`` will run on a
        GPU (``medsam3.models.build.uses_gpu`` of its backend and device), else 0."""
        if self.gpu != "auto":
            return int(self.gpu)
        return int(model is not None and uses_gpu(model.backend, model.device))


def ground_truth_table(value: str | None, demo_cohort: bool, demo_table: str) -> str:
    """The ground-truth table a run uses.

    Args:
        value: config ``ground_truth``: "auto", a path, or "" / None for none.
        demo_cohort: the run's cohort is the embedded demo cohort.
        demo_table: the demo's ground-truth table.

    Returns:
        ``demo_table`` for "auto" on the demo cohort, "" for "auto" on any other cohort (a
        user's cohort gets no metrics unless it names its own table), else ``value``.
    """
    if value == AUTO:
        return demo_table if demo_cohort else ""
    return value or ""


def run_warnings(salt: str, demo_cohort: bool, ground_truth: str, demo_table: str) -> list[str]:
    """Warnings about a configuration that is fine for the demo but not for a user's cohort.

    Args:
        salt: config ``study_id_salt``.
        demo_cohort: the run's cohort is the embedded demo cohort.
        ground_truth: the ground-truth table in use (:func:`ground_truth_table`).
        demo_table: the demo's ground-truth table.

    Returns:
        Zero to two warnings (the default salt, the demo ground truth on a user cohort).
    """
    if demo_cohort:
        return []
    warnings = []
    if salt == DEMO_SALT:
        warnings.append(
            f"study_id_salt is the public default {DEMO_SALT!r}: anyone can recompute a derived "
            "study id from a guessed source path; set a secret salt of your own "
            "(--config study_id_salt=...) before sharing outputs"
        )
    if ground_truth and Path(ground_truth).resolve() == Path(demo_table).resolve():
        warnings.append(
            "ground_truth is the demo table, which names demo studies, not this cohort's: "
            "its metrics rows fail; use --config ground_truth= (none) or your own table"
        )
    return warnings
