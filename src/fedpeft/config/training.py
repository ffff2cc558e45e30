"""The configuration sections of how a run trains and is run: federation (``fl``), local training
(``train``), evaluation (``eval``), Flower (``flower``) and output (``output``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from fedpeft.config.section import PATH_MAX, Section
from fedpeft.fl.sampling import clients_per_round


class FLConfig(Section):
    clients: int = Field(8, description="Number of clients the data is split across (>= 1).")
    rounds: int = Field(5, gt=0, description="Federated rounds.")
    fraction: float = Field(0.5, description="Fraction of clients sampled per round, in (0, 1].")
    strategy: str = Field("fedavg", description="Server strategy name (`fedpeft strategies` lists them).")
    strategy_args: dict[str, Any] = Field(
        default_factory=dict, description="Settings of the strategy, e.g. {mu: 0.01} for fedprox."
    )
    lora_aggregation: Literal["separate", "product", "stack"] = Field(
        "separate",
        description="How LoRA pairs are aggregated: separate (A and B each by the strategy, FedIT), product "
        "(the strategy acts on dW = B A, re-factored to rank r by truncated SVD; residual logged) or stack "
        "(FLoRA: the clients' pairs concatenated, exact, merged into the base each round; fedavg and fedprox).",
    )
    transport_dtype: Literal["native", "float32", "bfloat16", "float16"] = Field(
        "native",
        description="Dtype adapters and updates travel in (both ways): native (the trainable tensors' own), or "
        "rounded to float32 / bfloat16 / float16; bytes are counted at it.",
    )
    seed: int = Field(0, ge=0, description="Seeds the data split, client sampling, init and training.")
    min_clients: int = Field(
        1,
        ge=1,
        description="Usable client updates a round needs: updates from clients that failed, timed out or sent "
        "a mis-shaped or non-finite state are dropped (and logged); the round aggregates the rest if at least "
        "this many remain, otherwise the run stops with each client's reason (and resumes from its last round).",
    )

    @field_validator("clients")
    @classmethod
    def _clients(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be at least 1, got {v}")
        return v

    @field_validator("fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 < v <= 1.0:
            raise ValueError(f"must be in (0, 1], got {v}")
        return v

    @model_validator(mode="after")
    def _min_clients(self) -> FLConfig:
        sampled = clients_per_round(self.clients, self.fraction)
        if self.min_clients > sampled:
            raise ValueError(
                f"fl.min_clients={self.min_clients} exceeds the {sampled} client(s) sampled per round "
                f"(fl.clients={self.clients} x fl.fraction={self.fraction}); lower it or sample more clients"
            )
        return self


class TrainConfig(Section):
    epochs: float | None = Field(1.0, gt=0, description="Local epochs per round (ignored when max_steps is set).")
    max_steps: int | None = Field(None, gt=0, description="Local optimizer steps per round; overrides epochs.")
    batch_size: int = Field(8, gt=0, description="Examples per optimizer step.")
    micro_batch_size: int = Field(
        8, gt=0, description="Examples per forward pass; batch_size / micro_batch_size accumulation steps."
    )
    lr: float = Field(3e-4, gt=0, description="Peak learning rate (AdamW).")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "cosine", description="LR schedule within a client round."
    )
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Fraction of a round's local steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping norm; null disables clipping.")
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass instead of keeping them (less memory, ~30% more time).",
    )
    mixed_precision: Literal["none", "bf16", "fp16"] = Field(
        "none",
        description="Run forward passes (training and evaluation) under torch autocast in bf16 or fp16 (fp16 with a "
        "gradient scaler); the trainable tensors stay in their own dtype. For GPUs: most CPUs run it slower.",
    )
    packing: bool = Field(
        False,
        description="Causal LM: pack each micro-batch's examples into rows of data.max_length tokens with position "
        "ids restarting per document (no attention across documents) instead of padding each to the longest. "
        "Same loss and updates, fewer padded tokens.",
    )

    @model_validator(mode="after")
    def _accumulation(self) -> TrainConfig:
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"train.batch_size ({self.batch_size}) must be a multiple of train.micro_batch_size ({self.micro_batch_size})"
            )
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set train.epochs or train.max_steps")
        return self


class EvalConfig(Section):
    every: int = Field(
        1, ge=0, description="Evaluate every N rounds (the last round always); 0 evaluates only at the end."
    )
    batch_size: int = Field(16, gt=0, description="Examples per evaluation forward pass.")
    clients: bool = Field(True, description="Also evaluate the global adapter on each client's validation split.")
    max_new_tokens: int = Field(32, gt=0, description="Greedy generation length for generation-scored tasks.")
    retrieval_candidates: int = Field(
        1000,
        gt=0,
        description="Code search: each test query is ranked among this many codes (its own, the other test "
        "queries' and distractors from rows no client trains on), as far as the source has them.",
    )
    suites: list[str] = Field(
        default_factory=list,
        description="Code-evaluation suites scored by running the generated code in the sandbox, at evaluation "
        "rounds (round 0 included) for the global adapter and every personalised client's (`fedpeft suites` "
        "lists them).",
    )
    suite_limit: int | None = Field(
        None, ge=1, description="At most this many problems per suite (its first ones); null runs them all."
    )
    suite_samples: int = Field(1, ge=1, description="Samples per problem (n of pass@k).")
    suite_k: list[int] = Field(default_factory=lambda: [1], description="The k of each pass@k reported (k <= n).")
    suite_temperature: float = Field(
        0.0, ge=0.0, description="Sampling temperature for suites (0 is greedy; Astraios: n=20 at 0.2)."
    )
    suite_prompt: Literal["plain", "alpaca", "question-answer"] = Field(
        "plain",
        description="Prompt format: plain (the code prompt, for base models), alpaca (the instruction recipes' "
        "template) or question-answer (Astraios' 'Question: ...\\n\\nAnswer:').",
    )
    suite_max_new_tokens: int = Field(256, gt=0, description="Longest completion generated per sample.")
    suite_timeout: float = Field(10.0, gt=0, description="Seconds one sample may run in the sandbox.")
    suite_args: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Settings per suite, e.g. {recode-syntax: {variants: 5}}."
    )

    @model_validator(mode="after")
    def _suites(self) -> EvalConfig:
        if not self.suites and not self.suite_args:
            return self  # the suites' registry (and the generation code it imports) is loaded only when used
        from fedpeft.evaluation.passk import check_ks
        from fedpeft.evaluation.suites import SUITES
        from fedpeft.registry import parse_settings

        for name in self.suites:
            SUITES.get(name)  # an unknown name lists the valid ones
        if len(set(self.suites)) != len(self.suites):
            raise ValueError(f"eval.suites names a suite twice: {self.suites}")
        for name, args in self.suite_args.items():
            if name not in self.suites:
                raise ValueError(f"eval.suite_args has {name!r}, which is not in eval.suites {self.suites}")
            parse_settings(f"eval.suite_args.{name}", name, "suite", SUITES.get(name).Settings, args)
        if self.suites:
            check_ks(self.suite_k, self.suite_samples)
        return self


class FlowerConfig(Section):
    client_cpus: float = Field(1.0, gt=0, description="flower-sim: CPUs each simulated client (Ray actor) reserves.")
    client_gpus: float = Field(0.0, ge=0, description="flower-sim: GPU share each simulated client reserves.")
    round_timeout: float | None = Field(
        None, gt=0, description="Seconds the server waits for a round's replies (null: no limit)."
    )
    superlink: str = Field(
        "127.0.0.1:8000",
        description="flower-deployment: the SuperLink's address, host:port (its HTTP API; 8000 by default).",
    )
    root_certificates: str | None = Field(
        None,
        max_length=PATH_MAX,
        description="flower-deployment: the CA certificate (PEM) that signed the SuperLink's TLS certificate; "
        "null: an insecure (plain HTTP) connection, for 127.0.0.1 tests only.",
    )
    connect_timeout: float = Field(
        120.0,
        gt=0,
        description="flower-deployment: seconds the server waits for every client's node (flower-sim waits until "
        "its simulated nodes have started, however long a loaded machine takes).",
    )
    secure_aggregation: bool = Field(
        False,
        description="SecAgg+ (Flower's SecAggPlusWorkflow and secaggplus_mod): clients send masked states and the "
        "server learns only their example-weighted mean. Flower runtimes, fedavg/fedprox, >= 2 clients per round.",
    )
    secagg_num_shares: float = Field(
        1.0,
        gt=0,
        description="SecAgg+: secret shares per client, as a fraction of the round's clients (<= 1) or a count.",
    )
    secagg_reconstruction_threshold: float = Field(
        1.0,
        gt=0,
        description="SecAgg+: shares needed to reconstruct a secret, as a fraction of num_shares (<= 1) or a count; "
        "lower tolerates more dropouts, higher resists more collusion.",
    )
    secagg_clipping_range: float = Field(
        8.0, gt=0, description="SecAgg+: each value is clipped to [-range, range] before quantization."
    )
    secagg_quantization_range: int = Field(
        2**22,
        gt=1,
        description="SecAgg+: values are quantized to this many levels (resolution 2*clipping_range/levels).",
    )


class OutputConfig(Section):
    dir: str = Field("runs", max_length=PATH_MAX, description="Parent directory of run directories.")
    keep_checkpoints: int = Field(2, gt=0, description="Round checkpoints kept (the newest); older are deleted.")
    loggers: list[str] = Field(
        default_factory=list,
        description="Experiment trackers that get every numeric field of metrics.jsonl, the round as the step, and "
        "the config once: any of tensorboard (RUN_DIR/tensorboard), wandb (offline unless WANDB_MODE says otherwise; "
        "RUN_DIR/wandb) and mlflow (MLFLOW_TRACKING_URI, else RUN_DIR/mlruns). Needs pip install 'fedpeft[trackers]'; "
        "a resumed run continues each tracker's run (ids in RUN_DIR/trackers.json).",
    )

    @field_validator("loggers")
    @classmethod
    def _known_loggers(cls, names: list[str]) -> list[str]:
        from fedpeft.reporting.trackers import check_names  # the trackers' libraries load only when a run opens them

        check_names(names)
        return names
