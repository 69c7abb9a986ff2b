"""Request and response bodies of the transplant and job routes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

Ref = str | dict[str, Any]
"""A module version: "name@N" | "name@alias" | "name" (latest) | {"name", "version"}."""

METHODS = ("back_distillation", "distillation", "supervised")


class TrainOptions(BaseModel):
    """Optional training knobs passed to the engine's `TrainConfig` (defaults: the engine's)."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int | None = Field(None, ge=1, le=65536)
    lr: float | None = Field(None, gt=0, le=10)
    weight_decay: float | None = Field(None, ge=0)
    steps_per_epoch: int | None = Field(
        None, ge=1, description="Steps per round (history, held-out evaluation, early stopping)."
    )
    max_steps: int | None = Field(None, ge=1)
    val_fraction: float | None = Field(None, ge=0, lt=1)
    patience: int | None = Field(
        None, ge=1, description="Optimiser steps without a better held-out loss before stopping "
        "(default: half the budget)."
    )
    lambda_jac: float | None = Field(None, ge=0)
    probes: int | None = Field(None, ge=1, le=64)
    probe_pool: int | None = Field(None, ge=1, le=64, description="Probes drawn per sample once (default 4).")
    normalise: Literal["probe", "batch", "none"] | None = None
    output_loss: Literal["auto", "mse", "kl"] | None = Field(
        None, description='"auto" (default): temperature-scaled KL for class logits, MSE otherwise.'
    )
    temperature: float | None = Field(None, gt=0, le=100, description='Softmax temperature of "kl" (2).')
    probe_dist: Literal["rademacher", "gaussian"] | None = None
    anchor: float | None = Field(
        None, ge=0, le=1000, description="With reference_category_module: weight of the term keeping the "
        "adapter's output near the reference's features (default 1; 0 = the stitch is only the start)."
    )
    grad_clip: float | None = Field(None, gt=0)


class AutoBudgetOptions(BaseModel):
    """`adapter: {"auto": {"budget": …}}`: what the search may spend (omitted: the engine's defaults)."""

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(
        None, ge=2, le=1_000_000,
        description="Optimiser steps, super-network + fine-tune (default: what one fixed adapter would run).",
    )
    supernet_fraction: float | None = Field(
        None, gt=0, lt=1, description="Share of `steps` spent on the super-network (default 0.2)."
    )
    max_candidates: int | None = Field(None, ge=1, le=1024, description="Children scored in the search.")
    depths: list[Annotated[int, Field(ge=1, le=8)]] | None = Field(None, min_length=1, max_length=8)
    widths: list[Annotated[int, Field(ge=1, le=4096)]] | None = Field(None, min_length=1, max_length=8)
    kernels: list[Annotated[int, Field(ge=1, le=15)]] | None = Field(None, min_length=1, max_length=8)
    skips: list[bool] | None = Field(None, min_length=1, max_length=2)
    sampling: Literal["depth", "uniform", "sandwich"] | None = Field(
        None, description="Children per super-net step: sandwich (default), depth first, or uniform."
    )
    finalists: int | None = Field(
        None, ge=1, le=64, description="Best starting points trial-fine-tuned before one is kept (default 4)."
    )
    trial_fraction: float | None = Field(
        None, gt=0, lt=1,
        description="Share of the post-super-net steps spent on the finalists' trials (default 0.3).",
    )
    selection: Literal["race", "halving"] | None = Field(
        None, description="How the finalists are cut to one: one round (race) or successive halving, the "
        "survivors continuing where they stopped (halving)."
    )
    stratify: StrictBool | None = Field(
        None, description="Finalists taken round-robin over depths instead of the best overall."
    )
    lift_warm_starts: StrictBool | None = Field(
        None, description="Grow each registered adapter offered as a warm start into the best-ranked child "
        "that holds it exactly (the same function at step 0, more capacity) before the race (default true)."
    )

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        # Names every allowed key (pydantic's extra="forbid" says only "Extra inputs are not permitted").
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise ValueError(f"unknown budget keys {unknown}; the keys are {', '.join(cls.model_fields)}")
        return data


class AutoOptions(BaseModel):
    """The value of `adapter.auto`."""

    model_config = ConfigDict(extra="forbid")

    budget: AutoBudgetOptions = Field(default_factory=AutoBudgetOptions)


class SynthesisOptions(BaseModel):
    """`synthesis`: how a transplant without a dataset makes its training inputs (transplant/synth.py)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["auto", "deepinversion", "features", "noise"] = Field(
        "auto", description='"deepinversion": inputs whose statistics meet the teacher\'s BatchNorm '
        'layers; "features": f\'s features made directly against g_T\'s BatchNorm layers; "noise": Gaussian '
        'noise of f\'s input signature; "auto": deepinversion when the teacher keeps BatchNorm statistics, '
        "else noise.",
    )
    n: int = Field(128, ge=1, le=65536, description="Synthetic samples to make.")
    steps: int = Field(100, ge=0, le=100_000, description="Optimiser steps per batch of synthetic samples.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Default: the request's seed.")
    batch_size: int | None = Field(None, ge=1, le=65536, description="Samples optimised together (64).")
    lr: float | None = Field(None, gt=0, le=100)
    tv: float | None = Field(None, ge=0, description="Weight of the total-variation prior (0.05).")
    l2: float | None = Field(None, ge=0, description="Weight of the L2 prior (0.001).")
    diversity: float | None = Field(
        None, ge=0, description="Weight of the confident-and-balanced term on the teacher's outputs (0.5)."
    )


class TransplantCreate(BaseModel):
    """POST /v1/transplants: learn an adapter so that g_S(h(f(x))) does what g_T(f(x)) does."""

    model_config = ConfigDict(extra="forbid")

    category_module: Ref = Field(examples=["bird-f@1"])
    teacher_task_module: Ref = Field(examples=["bird-seg@1"])
    student_task_module: Ref = Field(examples=["seg@3"])
    dataset: str | None = Field(
        None, min_length=1, max_length=64, description="Dataset id (POST /v1/datasets); null or omitted: a "
        "data-free transplant, on inputs synthesised from the networks (`synthesis`).",
    )
    synthesis: SynthesisOptions | None = Field(
        None, description="Synthetic training inputs: the only inputs without a dataset (default options "
        "then), added to the dataset's when both are given.",
    )
    method: Literal["back_distillation", "distillation", "supervised"] = "back_distillation"
    adapter: dict[str, Any] | Literal["auto"] | None = Field(
        None,
        description='Adapter architecture: {"arch": "conv"|"mlp", "layers", "hidden", …}; "auto" or '
        '{"auto": {"budget": {…AutoBudgetOptions}}} (architecture and weight search, warm-started from '
        "registered adapters into the same task); or null (a small adapter fitted to the shapes).",
    )
    steps: int | None = Field(
        None, ge=1, le=1_000_000, description="Optimiser steps in all. Default: 40 passes over the "
        "inputs, at least 300 and at most 3000 steps (the engine's TrainConfig.budget).",
    )
    epochs: int | None = Field(
        None, ge=1, le=10_000, description="The budget as passes over the inputs instead (`steps` wins)."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    reference_category_module: Ref | None = Field(
        None, examples=["imagenet-f@1"],
        description="The student task module's own category module for the same inputs, when there is one "
        "(e.g. the lower half of the generic network): the adapter starts as the least-squares map from "
        "the category module's features to this module's.",
    )
    result_module: str | None = Field(
        None, min_length=1, max_length=128,
        description='Adapter module to register into (default "<category>-to-<task>-adapter").',
    )
    train: TrainOptions | None = Field(None, description="Optional training knobs (batch size, lr, …).")


class JobQueued(BaseModel):
    job_id: str
    status: str


class JobRead(BaseModel):
    """A job: its validated request, live progress and, once done, its result or error."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    request: dict
    progress: dict
    result: dict | None = None
    error: str | None = None
    attempts: int
    cancel_requested: bool
    worker: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime


class JobDetail(JobRead):
    """One job with its per-epoch history (loss curves)."""

    history: list


class JobList(BaseModel):
    items: list[JobRead]
    next_cursor: str | None = None


class AmalgamationTeacher(BaseModel):
    """One teacher classifier: a category module f and a task module (head) on f's features."""

    model_config = ConfigDict(extra="forbid")

    category_module: Ref = Field(examples=["digits-low-f@1"])
    task_module: Ref = Field(examples=["digits-low-head@1"])
    classes: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        None, min_length=1, max_length=10_000,
        description="Class names in the order of the head's logits. Default: the head version's "
        '`metrics["classes"]`; required when the head version has none.',
    )


class StudentOptions(BaseModel):
    """The student's architecture (`transplant.amalgamate.StudentConfig`; input shape: the dataset's)."""

    model_config = ConfigDict(extra="forbid")

    widths: list[Annotated[int, Field(ge=1, le=2048)]] = Field([32, 64], min_length=1, max_length=8)
    kernel_sizes: list[Annotated[int, Field(ge=1, le=15)]] | None = Field(
        None, min_length=1, max_length=8, description="Odd kernel size per block (default 3)."
    )
    pools: list[Annotated[int, Field(ge=1, le=16)]] | None = Field(
        None, min_length=1, max_length=8, description="Max-pool factor per block (default 2; 1 = none)."
    )
    head_hidden: list[Annotated[int, Field(ge=1, le=8192)]] = Field([], max_length=4)


class AmalgamationOptions(BaseModel):
    """Optional knobs passed to the engine's `AmalgamationConfig` (defaults: `epochs` for every stage)."""

    model_config = ConfigDict(extra="forbid")

    epochs_per_layer: int | None = Field(None, ge=1, le=10_000)
    head_epochs: int | None = Field(None, ge=1, le=10_000)
    finetune_epochs: int | None = Field(None, ge=1, le=10_000)
    lr: float | None = Field(None, gt=0, le=10)
    finetune_lr: float | None = Field(None, gt=0, le=10)
    batch_size: int | None = Field(None, ge=1, le=65536)
    fam_init: Literal["identity", "default"] | None = None


class AmalgamationCreate(BaseModel):
    """POST /v1/amalgamations: one compact student classifying the union of the teachers' classes."""

    model_config = ConfigDict(extra="forbid")

    teachers: list[AmalgamationTeacher] = Field(min_length=2, max_length=16)
    dataset: str = Field(min_length=1, max_length=64, description="Unlabelled inputs (POST /v1/datasets).")
    student: StudentOptions = Field(default_factory=StudentOptions)
    epochs: int = Field(
        20, ge=1, le=10_000, description="Epochs of each stage (layer-wise, head, fine-tune)."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    result_module: str | None = Field(
        None, min_length=1, max_length=100,
        description='Category (and category module name) of the student; its task module is "<name>-<task>". '
        'Default "amalgam-<first 8 characters of the job id>".',
    )
    train: AmalgamationOptions | None = Field(None, description="Optional training knobs.")
