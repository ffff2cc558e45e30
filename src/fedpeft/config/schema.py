"""The typed configuration of one run. Every field says what it is for; unknown keys are errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedpeft.fl.sampling import clients_per_round

PATH_MAX = 4096
"""Longest name or path a field that names a file, directory or model takes (Linux's PATH_MAX)."""


def _known_home(path: str) -> str:
    """A path starting with ``~user`` names a user this machine knows (else expanding it fails later)."""
    if path.startswith("~"):
        try:
            Path(path).expanduser()
        except RuntimeError:
            raise ValueError("starts with the home directory of an unknown user") from None
    return path


class Section(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True, allow_inf_nan=False
    )

    @field_validator("*")
    @classmethod
    def _no_nul(cls, v: Any) -> Any:
        if isinstance(v, str) and "\x00" in v:
            raise ValueError("contains a NUL character (\\x00), which no name, path or setting may")
        return v


class ModelConfig(Section):
    name: str = Field(
        "builtin:small",
        max_length=PATH_MAX,
        description="Hub id, local model directory, or builtin:small / tiny / micro / micro64.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Dtype of the frozen base (with quantization=4bit: the compute dtype)."
    )
    device: str = Field(
        "auto", description="Where the model runs: auto (a CUDA GPU if torch sees one), cpu, cuda, cuda:N."
    )
    quantization: Literal["none", "8bit", "4bit"] = Field(
        "none",
        description="Load the base's linear weights through bitsandbytes: 8bit (LLM.int8) or 4bit (NF4 with double "
        "quantisation, as QLoRA); needs `pip install 'fedpeft[quant]'`. Adapters train in full precision.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _known_home(v)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"{v!r} is not a device; valid: auto, cpu, cuda, cuda:N, mps")
        return v


class PeftConfig(Section):
    method: Literal["lora", "ia3", "prompt", "ptuning", "prefix", "adapter_h", "adapter_p", "parallel", "full"] = Field(
        "lora",
        description="lora (with use_rslora / use_dora), ia3, prompt (prompt tuning), ptuning (P-tuning: a prompt "
        "encoder), prefix (prefix tuning), adapter_h / adapter_p / parallel (Houlsby, Pfeiffer and parallel "
        "bottleneck adapters), or full (every weight trains and travels).",
    )
    r: int = Field(8, description="LoRA rank (> 0).")
    alpha: float = Field(16.0, description="LoRA scaling numerator: updates are scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["auto"] = Field(
        "auto", description="Module names to adapt, or 'auto' for the architecture's attention projections."
    )
    use_rslora: bool = Field(False, description="LoRA: scale by alpha / sqrt(r) (rank-stabilised LoRA).")
    use_dora: bool = Field(False, description="LoRA: DoRA, a trained magnitude per output on top of LoRA.")
    num_virtual_tokens: int = Field(20, gt=0, description="prompt / ptuning / prefix: learned virtual tokens.")
    bottleneck_size: int = Field(64, gt=0, description="adapter_h / adapter_p / parallel: bottleneck width.")
    bottleneck_activation: Literal["tanh", "relu", "gelu"] = Field(
        "tanh", description="adapter_h / adapter_p / parallel: the bottleneck's non-linearity (S2: tanh)."
    )
    client_ranks: list[int] | None = Field(
        None,
        description="LoRA rank of each client (client c trains rank client_ranks[c % len]) inside the global "
        "adapter of rank peft.r; null: every client uses peft.r.",
    )

    @field_validator("r")
    @classmethod
    def _positive_rank(cls, v: int) -> int:
        if v <= 0:
            raise ValueError(f"must be a positive integer, got {v}")
        return v

    @model_validator(mode="after")
    def _client_ranks(self) -> PeftConfig:
        ranks = self.client_ranks
        if ranks is not None and self.method != "lora":
            raise ValueError(f"peft.client_ranks are LoRA ranks; peft.method={self.method} has none")
        if ranks is not None and (not ranks or any(not 0 < r <= self.r for r in ranks)):
            raise ValueError(
                f"peft.client_ranks={ranks} must be a non-empty list of ranks in 1..peft.r={self.r} "
                "(peft.r is the global adapter's rank)"
            )
        return self


class DataConfig(Section):
    source: str = Field(
        "stdlib",
        max_length=PATH_MAX,
        description="Where rows come from: 'stdlib' (built-in corpus), a known hub id (e.g. "
        "databricks/databricks-dolly-15k, nyu-mll/glue/cola) or a local .json/.jsonl/.csv/.parquet file.",
    )
    schema_: str | None = Field(
        None,
        alias="schema",
        description="Published schema of a local file: dolly, guanaco-commits, cola, sst2, codexglue-defect, "
        "codexglue-code-to-text, codexglue-completion, codexglue-clone, codexglue-search.",
    )
    task: Literal[
        "instruction", "completion", "code_to_text", "code_search", "defect", "clone", "text_classification"
    ] = Field(
        "instruction",
        description="instruction: signature + docstring -> body (Alpaca template); completion: whole functions, "
        "token accuracy ignoring special tokens; code_to_text: function -> first docstring sentence, smoothed "
        "BLEU-4 (CodeXGLUE); defect: function -> buggy or clean (injected bugs), a classification head; "
        "code_search: docstring -> function, MRR over the split; clone: function pair -> clone or not, F1 at a validation-chosen threshold; text_classification: "
        "sentence -> label (CoLA, SST-2), MCC and accuracy.",
    )
    modules: list[str] | None = Field(None, description="Restrict the stdlib corpus to these top-level modules.")
    max_rows: int | None = Field(None, gt=0, description="Keep a seeded random subset of this many rows.")
    test_size: int = Field(64, gt=0, description="Rows held out as the global test split.")
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Fraction of each client's rows held out for validation."
    )
    partition: Literal["iid", "shards", "dirichlet", "quantity", "natural"] = Field(
        "iid",
        description="iid: uniform random; shards: sort by category, 2K shards, 2 per client (Shepherd); "
        "dirichlet: per-category client shares from Dirichlet(alpha); quantity: each client takes U(a, b) of "
        "the remaining pool (S0); natural: whole categories (modules) per client.",
    )
    shards_per_client: int = Field(2, gt=0, description="Shards each client receives with partition=shards.")
    dirichlet_alpha: float = Field(0.5, gt=0, description="Concentration for partition=dirichlet (small = skewed).")
    quantity_range: tuple[float, float] = Field(
        (0.03, 0.3), description="[a, b] for partition=quantity: fraction of the remaining pool each client takes."
    )
    min_client_size: int = Field(1, ge=1, description="Fewest rows a client may hold; a split below it is an error.")
    max_length: int = Field(256, gt=8, description="Token cutoff per example (prompt + response).")
    train_on_inputs: bool = Field(False, description="Also compute the loss on prompt tokens (false masks them).")
    template: Literal["alpaca"] = Field("alpaca", description="Prompt template.")
    server_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Fraction of the training rows the server holds as public data (FedKD's teacher and "
        "distillation data, dynamic-token's reference set); 0 gives the server none.",
    )
    server_split: Literal["held_out", "shared"] = Field(
        "held_out",
        description="held_out: the server's rows are rows no client holds (beyond data.max_rows when there are "
        "enough, so the clients' split is unchanged; else taken out of the client pool), so server-side strategies "
        "see extra data (FedKD's published setting); shared: they are a sample of the clients' own training rows, "
        "so no strategy sees more data than FedAvg does (the fair setting).",
    )

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        return _known_home(v)


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


class RunConfig(Section):
    recipe: str = Field("default", max_length=PATH_MAX, description="Recipe this config came from.")
    model: ModelConfig = ModelConfig()
    peft: PeftConfig = PeftConfig()
    data: DataConfig = DataConfig()
    fl: FLConfig = FLConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    runtime: Literal["local", "flower-sim", "flower-deployment"] = Field(
        "local",
        description="Where clients run: local (one process, one model), flower-sim (Flower's Simulation Engine: "
        "a ServerApp and one virtual SuperNode per client, the same client round and strategy) or "
        "flower-deployment (the run is submitted to the SuperLink at flower.superlink; one SuperNode per client, "
        "started with its partition-id).",
    )
    flower: FlowerConfig = FlowerConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _combinations(self) -> RunConfig:
        quant = self.model.quantization
        if quant != "none" and self.peft.method == "full":
            raise ValueError(
                f"peft.method=full trains every base weight, but model.quantization={quant} stores them as integers; "
                "use an adapter method (lora on a 4bit base is QLoRA) or model.quantization=none"
            )
        if quant != "none" and self.fl.lora_aggregation == "stack":
            raise ValueError(
                f"fl.lora_aggregation=stack merges every round into the base weights, which model.quantization={quant} "
                "stores as integers; use separate or product, or model.quantization=none"
            )
        if self.train.packing and self.peft.method in ("prompt", "ptuning", "prefix"):
            raise ValueError(
                f"train.packing puts several documents in one row; peft.method={self.peft.method} prepends its "
                "virtual tokens once per row, so documents after the first would not see them. Turn packing off"
            )
        if self.flower.secure_aggregation:
            self._check_secure_aggregation()
        if self.train.packing and self.data.task in ("code_search", "defect", "clone", "text_classification"):
            raise ValueError(
                f"train.packing applies to the token-predicting tasks (instruction, completion, code_to_text); "
                f"data.task={self.data.task} scores whole examples"
            )
        return self

    def _check_secure_aggregation(self) -> None:
        """SecAgg+ reveals only the example-weighted mean of the clients' states: it needs Flower's processes,
        a strategy whose aggregate is that mean, and at least two clients per round."""
        where = "flower.secure_aggregation=true"
        if self.runtime == "local":
            raise ValueError(
                f"{where} masks what clients send to a server; use runtime=flower-sim or flower-deployment"
            )
        if self.fl.strategy not in ("fedavg", "fedprox"):
            raise ValueError(
                f"{where} gives the server only the example-weighted mean of the clients' states, which is what "
                f"fedavg and fedprox aggregate; fl.strategy={self.fl.strategy} needs each client's state"
            )
        if self.fl.lora_aggregation != "separate" or self.peft.client_ranks:
            raise ValueError(
                f"{where} averages the states as they are: use fl.lora_aggregation=separate, no peft.client_ranks"
            )
        if clients_per_round(self.fl.clients, self.fl.fraction) < 2:
            raise ValueError(f"{where} needs at least 2 clients per round (a mean of one reveals it)")
